"""Checkpoint converters: DeepMind Haiku (`haiku`) and timm (`timm`) -> Keras."""


def listing(title, items, limit=None):
    """``title (n):`` then one item per line (the first `limit` of them)."""
    shown = items if limit is None else items[:limit]
    more = f"\n  ... and {len(items) - len(shown)} more" if len(shown) < len(items) else ""
    return f"{title} ({len(items)}):\n  " + "\n  ".join(shown) + more


def assign_or_raise(assignments, sections, header, limit=None):
    """Assigns every ``(variable, array)`` pair, or none of them.

    Args:
        assignments: the checked ``(variable, array)`` pairs.
        sections: ``(title, items)`` problems found while checking (missing
            names, unused names, shape mismatches); any item refuses the load.
        header: the first line of the error.
        limit: how many items of a section the error shows.

    Raises:
        ValueError: `header` and every non-empty section; nothing is assigned.
    """
    problems = [listing(title, items, limit) for title, items in sections if items]
    if problems:
        raise ValueError(header + "\n" + "\n".join(problems))
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
