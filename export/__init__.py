"""SavedModel export of NF models for TF Serving, TF Hub and Kaggle Models."""
