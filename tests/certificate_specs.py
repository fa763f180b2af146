"""A tiny certificates spec (two spirals, a per-layer ResNet) that the certificate tests run."""

from __future__ import annotations

TINY = """
name = "{name}"
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 6
activation = "tanh"
[train]
steps = 40
lr = 2e-2
batch_size = 64
[certificate]
posterior_steps = 20
rounds = 4
test_rounds = 1
scales = [0.1, 0.03]
[sweep]
sample_size = [200]
"model.depth" = {depths}
seed = {seeds}
"certificate.prior" = {priors}
"""


def tiny(name="cert-tiny", depths="[2, 4]", seeds="[0]", priors='["brownian", "iid"]') -> str:
    return TINY.format(name=name, depths=depths, seeds=seeds, priors=priors)
