"""The GPU worker: renders jobs from the model streams with resident diffusers pipelines."""

import logging

# diffusers imports transformers' image processors, which warn at import that torchvision is
# missing; no pipeline here uses it. Set before any submodule imports diffusers.
logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
