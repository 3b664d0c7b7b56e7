"""charnn: character-level recurrent language models.

    import charnn
    summary = charnn.train(corpus=["input.txt"], max_time=120, out="runs/mine")
    model = charnn.load("runs/mine")
    print(model.generate("ROMEO:", length=200, temperature=0.8, seed=1))  # settings: charnn.SampleConfig
    print(model.evaluate(open("other.txt").read()).bpc)
    print(charnn.novelty("runs/mine", text).longest_text)  # the longest passage copied from training
"""

__version__ = "0.1.0"

from charnn.data.novelty import Novelty  # noqa: E402
from charnn.data.vocab import Vocab  # noqa: E402
from charnn.errors import CharnnError  # noqa: E402
from charnn.infer.model import CharModel, load  # noqa: E402
from charnn.infer.novelty import novelty  # noqa: E402
from charnn.infer.sampling import SampleConfig  # noqa: E402
from charnn.models import ModelConfig, build_model  # noqa: E402
from charnn.train.api import train  # noqa: E402
from charnn.train.config import TrainConfig  # noqa: E402
from charnn.train.loop import Summary  # noqa: E402

__all__ = [
    "CharModel",
    "CharnnError",
    "ModelConfig",
    "Novelty",
    "SampleConfig",
    "Summary",
    "TrainConfig",
    "Vocab",
    "__version__",
    "build_model",
    "load",
    "novelty",
    "train",
]
