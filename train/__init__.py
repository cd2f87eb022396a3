"""One training engine for every stage (tokenizer now, LLM stages later): plain PyTorch or DeepSpeed ZeRO 0-3.

    from vqrae.train import load_config, train
    from vqrae.train.stages import get_stage
    Stage = get_stage("tokenizer-stage1")
    result = train(Stage(load_config(Stage.config_class, "configs/shapes-tiny/tokenizer-stage1.yaml", ["lr=3e-4"])))

A stage (train/stage.py) says what to train and on what; the engine (train/engine.py) does the rest.
"""

from .config import TrainConfig, load_config, save_config
from .engine import TrainingDiverged, TrainResult, train
from .stage import Stage, param_groups, sub_state_dict

__all__ = ["Stage", "TrainConfig", "TrainResult", "TrainingDiverged", "load_config", "param_groups", "save_config",
           "sub_state_dict", "train"]
