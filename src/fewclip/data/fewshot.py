"""Few-shot label draws: moved to :mod:`fewclip.sampling` (the feature world, which must not
import ``fewclip.data``); re-exported here so that ``fewclip.data.fewshot`` keeps working."""

from fewclip.sampling import *  # noqa: F403
from fewclip.sampling import __all__  # noqa: F401
