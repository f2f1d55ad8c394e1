"""Typed configuration of a sampler: one dataclass, mirrored one-to-one by ``configs/sampler/*.yaml``."""

from __future__ import annotations

import math
from dataclasses import dataclass

# The orders each solver has. unipc: UniP-p predictor + UniC corrector (order p + 1 away from the ends);
# dpmpp_2m: 1 = DPM-Solver++(1) (DDIM), 2 = DPM-Solver++(2M); euler and heun have one order each.
SOLVER_ORDERS: dict[str, tuple[int, ...]] = {
    "unipc": (1, 2, 3),
    "euler": (1,),
    "heun": (2,),
    "dpmpp_2m": (1, 2),
}
UNIPC_VARIANTS = ("bh1", "bh2")  # B(h) = h or e^h − 1 in UniPC's order conditions


@dataclass
class SamplerConfig:
    """Which solver, on which sigma grid. Defaults are the released ChronoEdit setting (diffusers' scheduler
    config: UniPC, order 2, bh2, flow shift 5.0, 1000 training steps, 50 inference steps)."""

    name: str = "unipc"  # a key of SOLVER_ORDERS
    steps: int = 50  # inference steps = model evaluations per sample (×2 for heun, ×2 again under CFG)
    shift: float = 5.0  # σ' = sσ / (1 + (s − 1)σ); 2.0 with the distillation LoRA
    order: int = 2  # must be one of SOLVER_ORDERS[name]
    solver_type: str = "bh2"  # unipc only: "bh1" or "bh2"
    lower_order_final: bool = True  # unipc: order min(order, steps − i) on the last steps (the step into σ = 0
    # is first order for every multistep solver either way: higher orders divide by zero there)
    num_train_timesteps: int = 1000  # timestep = σ · num_train_timesteps (truncated to int64)

    def __post_init__(self) -> None:
        problems = []
        if self.name not in SOLVER_ORDERS:
            problems.append(f"name={self.name!r} is not one of {sorted(SOLVER_ORDERS)}")
        elif self.order not in SOLVER_ORDERS[self.name]:
            problems.append(f"order={self.order!r} is not an order of {self.name} (has {SOLVER_ORDERS[self.name]})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps={self.steps!r} must be an int ≥ 1")
        if isinstance(self.shift, bool) or not isinstance(self.shift, (int, float)) or not 0 < self.shift < math.inf:
            problems.append(f"shift={self.shift!r} must be a finite number > 0")
        if self.solver_type not in UNIPC_VARIANTS:
            problems.append(f"solver_type={self.solver_type!r} is not one of {UNIPC_VARIANTS}")
        if not isinstance(self.lower_order_final, bool):
            problems.append(f"lower_order_final={self.lower_order_final!r} must be a bool")
        if (
            isinstance(self.num_train_timesteps, bool)
            or not isinstance(self.num_train_timesteps, int)
            or self.num_train_timesteps < 1
        ):
            problems.append(f"num_train_timesteps={self.num_train_timesteps!r} must be an int ≥ 1")
        if problems:
            raise ValueError("invalid SamplerConfig: " + "; ".join(problems))
        self.shift = float(self.shift)


__all__ = ["SOLVER_ORDERS", "UNIPC_VARIANTS", "SamplerConfig"]
