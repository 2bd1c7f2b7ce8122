"""`python -m nfnet_keras.convert SRC --model nfnet_f0 --out F0.weights.h5`."""

import sys

from nfnet_keras.convert.cli import main

sys.exit(main())
