"""The reward service: named reward models scoring prompt/completion pairs over gRPC.

Importing the package turns the Hugging Face hub off for this process. It runs before
any submodule (and `python -m services.reward`) imports transformers, which reads the
setting once at import; the models are local directories and must never be fetched.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
