"""The tutorial's own model, SeqNet, as it is published: the reference the workflow is measured
against (benchmark.py's "tutorial loop" and the tests' one-device reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SeqNet(nn.Module):
    """The tutorial's model; its 'cuda:0' and 'cuda:1' are the stage devices given."""

    def __init__(self, input_size, hidden_size1, output_size, devices):
        super().__init__()
        self.devices = devices
        self.lin1 = nn.Linear(input_size, hidden_size1).to(devices[0])
        self.lin2 = nn.Linear(hidden_size1, output_size).to(devices[1])

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = self.lin1(x.to(self.devices[0]))
        x = F.log_softmax(x, dim=1)
        out = self.lin2(x.to(self.devices[1]))
        return out
