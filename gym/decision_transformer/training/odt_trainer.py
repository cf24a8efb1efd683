"""Training the DT's stochastic head: the Online Decision Transformer's objective and its dual step.

Each optimizer step is the usual guarded one (clip, one host sync, step only when finite; see
:class:`Trainer`) on the policy loss ``NLL - lambda * H`` (``training/odt_loss.py``), followed by
one Adam step of the log-temperature on ``lambda * (H - target)``, with ``H`` the step's entropy
averaged over micro-batches and ranks, so every rank's temperature stays equal. The temperature
is a module of its own, outside DDP/FSDP and never clipped with the model. Offline ``--policy
stochastic`` training and the online rounds both use this trainer.
"""

from __future__ import annotations

import torch

from .odt_loss import LogTemperature, odt_losses, temperature_loss
from .seq_trainer import SequenceTrainer


class ODTTrainer(SequenceTrainer):
    def __init__(
        self,
        *args,
        target_entropy: float,
        init_temperature: float = 0.1,
        temperature_lr: float = 1e-4,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        device = next(self.model.parameters()).device
        self.temperature = LogTemperature(init_temperature).to(device)
        # The ODT's dual optimiser: Adam with betas (0.9, 0.999) on the log-temperature.
        self.temperature_optimizer = torch.optim.Adam(
            self.temperature.parameters(), lr=temperature_lr, betas=(0.9, 0.999)
        )
        self.target_entropy = float(target_entropy)  # in env units (policy_heads.py)
        self._sums: dict[str, torch.Tensor] = {}

    def compute_loss(self) -> torch.Tensor:
        batch = self.get_batch()
        states, actions, rewards, dones, rtg, timesteps, attention_mask = batch
        model_mask = attention_mask if getattr(batch, "padded", True) else None
        with self.autocast():
            _, dist, _ = self.model(
                states,
                actions,
                rewards,
                rtg[:, :-1],
                timesteps,
                attention_mask=model_mask,
                return_dist=True,
            )
        # The entropy draw uses torch's global generator, reseeded per iteration (resume-exact).
        loss, _, metrics = odt_losses(
            dist, actions, attention_mask, self.temperature(), self.target_entropy
        )
        # Weighted like the loss (Trainer.train_step), so the sums are the global batch's means.
        scale = getattr(self.get_batch, "weight", 1.0) / self.grad_accum_steps
        for name in ("entropy", "nll"):
            part = metrics[name] * scale
            self._sums[name] = part if name not in self._sums else self._sums[name] + part
        return loss

    def train_step(self) -> float:
        self._sums = {}
        return super(SequenceTrainer, self).train_step()

    def step_stats(self) -> list[torch.Tensor]:
        return [self._sums["entropy"], self._sums["nll"], self.temperature().detach()]

    def after_step(self, device_means: torch.Tensor, host_means: list[float]) -> None:
        entropy, nll, temperature = host_means
        # The dual step on the rank-averaged entropy, on the device: no extra sync.
        self.temperature_optimizer.zero_grad(set_to_none=True)
        temperature_loss(self.temperature(), device_means[0], self.target_entropy).backward()
        self.temperature_optimizer.step()
        # The temperature this step's policy loss used.
        self.diagnostics["training/entropy"] = entropy
        self.diagnostics["training/nll"] = nll
        self.diagnostics["training/temperature"] = temperature

    def extra_state(self) -> dict:
        return {
            "temperature": self.temperature.state_dict(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
        }

    def load_extra_state(self, ckpt: dict) -> None:
        if "temperature" in ckpt:
            self.temperature.load_state_dict(ckpt["temperature"])
            self.temperature_optimizer.load_state_dict(ckpt["temperature_optimizer"])
