"""The sizes of ``scripts/bench_downstream.py``'s full and quick runs.

Their own module so that the benchmark and its report (``scripts/downstream_report.py``, which
prints them beside the table) both read them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    pool_dolly: int
    pool_gsm: int
    gsm_targets: int
    gsm_eval: int
    mmlu_targets: int
    mmlu_eval: int
    fraction: float
    max_length: int  # scoring and proxy construction
    eval_max_length: int
    proj_dim: int
    probe_samples: int
    align_steps: int
    ft_epochs: float
    ft_lr: float
    ft_batch: int
    random_seeds: int
    proxy_seeds: int
    rhos: tuple[float, ...]
    warmup_fraction: float  # 0: score with the target as loaded


# Sized for about 90 minutes on the shared 2-core CPU. Costs measured here: SmolLM2
# forward+backward ~80 tokens/s (shared/NOTES.md); an IPSVD factorisation ~135 s per proxy and an
# alignment step (4 records x 64 tokens) ~25 s (docs/bench/proxy.json). So: a 120-record pool
# (108 Dolly + 12 GSM8K, the issue's ~9% GSM8K share), 16 target records per task, 8 alignment
# steps at 64 tokens, 6 selected records (5%) fine-tuned for 2 epochs, 48 GSM8K / 64 MMLU
# evaluation records. The 3,296-record pool and 200/400 evaluation records are many
# times that. The table's footer gives the measured wall time.
FULL = Sizes(
    pool_dolly=108, pool_gsm=12, gsm_targets=16, gsm_eval=48, mmlu_targets=16, mmlu_eval=64,
    fraction=0.05, max_length=64, eval_max_length=160, proj_dim=8192, probe_samples=16,
    align_steps=8, ft_epochs=2, ft_lr=5e-5, ft_batch=3, random_seeds=3, proxy_seeds=3,
    rhos=(0.3, 0.5, 0.7), warmup_fraction=0.05,
)  # fmt: skip
QUICK = Sizes(
    pool_dolly=36, pool_gsm=4, gsm_targets=4, gsm_eval=8, mmlu_targets=4, mmlu_eval=8,
    fraction=0.05, max_length=64, eval_max_length=96, proj_dim=512, probe_samples=4,
    align_steps=2, ft_epochs=1, ft_lr=5e-5, ft_batch=2, random_seeds=1, proxy_seeds=1,
    rhos=(0.3, 0.5, 0.7), warmup_fraction=0.05,
)  # fmt: skip
