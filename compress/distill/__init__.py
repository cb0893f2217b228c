"""Knowledge distillation: train a smaller student to match a teacher's next-token distributions.

- config.py   DistillConfig (every default) and the run hash that guards --resume
- losses.py   forward KL, reverse KL, generalized JSD, top-k, CE mixing: pure functions
- layer_choice.py  which teacher layers a derived student keeps (greedy removal by measured loss)
- student.py  derive a student from the teacher (layer subset, narrower MLP) or load one; size/tokenizer checks
- packing.py  texts -> train/held-out token blocks -> resumable, process-sharded batch order
- train.py    the run: accelerate (DDP or FSDP2), bf16 autocast on GPU, checkpoints/resume, validation, artifact
"""

from compress.distill.config import DistillConfig, make_config
from compress.distill.train import DistillResult, distill

__all__ = ["DistillConfig", "DistillResult", "distill", "make_config"]
