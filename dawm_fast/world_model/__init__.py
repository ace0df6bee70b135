"""Diffusion world model (reference PyTorch path): noise U-Net, DDIM scheduler, training, IDM.

The U-Net (``unet``) and the scheduler (``scheduler``) never import each other; the sampling
loop in ``dawm_fast.sampling`` wires them together.
"""
from dawm_fast.world_model.diffusion import (EMA, DiffusionWorldModel, EMAConfig, WorldModelConfig,
                                             build_loss_mask)
from dawm_fast.world_model.idm import (InverseDynamics, InverseDynamicsConfig,
                                       InverseDynamicsReport, train_inverse_dynamics)
from dawm_fast.world_model.scheduler import (DDIMScheduler, DiffusionScheduleConfig,
                                             SchedulerStepOutput, StepCoefficients,
                                             cosine_alphas_cumprod, ddim_timesteps)
from dawm_fast.world_model.training import WorldModelTrainer, WorldModelTrainerConfig
from dawm_fast.world_model.unet import (Conv1dBlock, ResidualTemporalBlock, TemporalUNet,
                                        TemporalUNetConfig)

__all__ = [
    "EMA", "EMAConfig", "DiffusionWorldModel", "WorldModelConfig", "build_loss_mask",
    "InverseDynamics", "InverseDynamicsConfig", "InverseDynamicsReport", "train_inverse_dynamics",
    "DDIMScheduler", "DiffusionScheduleConfig", "SchedulerStepOutput", "StepCoefficients",
    "cosine_alphas_cumprod", "ddim_timesteps",
    "WorldModelTrainer", "WorldModelTrainerConfig",
    "Conv1dBlock", "ResidualTemporalBlock", "TemporalUNet", "TemporalUNetConfig",
]
