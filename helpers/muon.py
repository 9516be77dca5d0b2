"""Muon for the conv filters: the momentum of a filter's gradient, flattened to a matrix (out channels x
in channels * k * k) and orthogonalised by a Newton-Schulz iteration, so that the step moves the filter the
same amount along every direction it has, however uneven the gradient's spectrum. SGD keeps every other
parameter (BatchNorm, biases, the classifier), as the Muon speedruns do.

    optimizer = SGDMuon([dict(params=others, ...), dict(params=filters, muon=True, lr=0.1, momentum=0.6)])

torch.optim.Muon takes 2-d parameters only, and a step that mixes it with SGD would be two optimizers to
checkpoint, scale (fp16) and schedule; one SGD whose `muon` groups take this step instead keeps a run's one
optimizer, its one state_dict and GradScaler's `scaler.step(optimizer)` as they are.
"""
from __future__ import annotations

import torch

# the quintic iteration's coefficients (Keller Jordan's Muon): chosen to push every singular value of a
# matrix whose norm is at most 1 toward 1 in few steps, accepting values anywhere in about 0.7..1.2
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """A matrix with `g`'s singular vectors and singular values near 1 (roughly U V^T of g = U S V^T), by
    `steps` Newton-Schulz iterations: matrix products only, no SVD."""
    a, b, c = NS_COEFFICIENTS
    x = g.float() / (g.norm() + 1e-7)   # every singular value <= 1: inside the iteration's basin
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T              # iterate on the smaller Gram matrix, x @ x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


class SGDMuon(torch.optim.SGD):
    """torch's SGD, except for the groups marked `muon=True`: each of their parameters (a conv filter) steps
    by Muon's update, `lr` x the orthogonalised Nesterov momentum of its gradient, scaled by
    sqrt(max(1, rows / cols)) so that tall matrices move as much as wide ones (torch.optim.Muon's "original"
    adjustment); a group's `weight_decay` there is decoupled (the weights shrink by lr x weight_decay), and
    `ns_steps` sets the iterations. Its momentum buffer lives in the optimizer's state, so checkpoints keep it.

    A group with `normalize=True` rescales each filter to the norm sqrt(out channels) before its step
    (airbench94's Muon): a BatchNorm follows every conv here, so a filter's scale changes nothing the network
    computes, only how far a step of a given size turns it; fixed, every step turns a filter by about lr
    (the update's norm is about the filter's), so the schedule alone sets the pace, where weights that grow
    under the orthogonal steps would slow it unasked. Weight decay then has nothing left to do and is skipped.
    """

    @torch.no_grad()
    def step(self, closure=None):
        groups = self.param_groups
        for group in groups:
            if group.get("muon"):
                self._muon_step(group)
        # SGD's own step over the other groups only
        self.param_groups = [g for g in groups if not g.get("muon")]
        try:
            return super().step(closure)
        finally:
            self.param_groups = groups

    def _muon_step(self, group):
        momentum, lr = group["momentum"], group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "muon_buffer" not in state:
                state["muon_buffer"] = torch.zeros_like(p)
            buf = state["muon_buffer"].mul_(momentum).add_(p.grad)
            direction = p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf
            matrix = direction.flatten(1)
            update = orthogonalize(matrix, group["ns_steps"]) * max(1.0, matrix.shape[0] / matrix.shape[1]) ** 0.5
            if group.get("normalize"):
                p.mul_(p.shape[0] ** 0.5 / (p.norm() + 1e-12))
            elif group["weight_decay"]:
                p.mul_(1 - lr * group["weight_decay"])
            p.add_(update.view_as(p), alpha=-lr)
