"""A user's own MobileNetV2-style network (torchvision-like structure, width multiplier, dropout head)."""

import torch
import torch.nn as nn


class ConvBNAct(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvRes(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hid = cin * t
        self.use_res = stride == 1 and cin == cout
        layers = [] if t == 1 else [ConvBNAct(cin, hid, 1)]
        layers += [ConvBNAct(hid, hid, 3, stride, groups=hid), ConvBNAct(hid, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Small(nn.Module):
    def __init__(self, width=1.0, num_classes=10):
        super().__init__()
        c = lambda v: max(8, int(v * width))
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 48, 2, 1)]
        feats = [ConvBNAct(1, c(24), 3, 1)]
        cin = c(24)
        for t, ch, n, s in cfg:
            for i in range(n):
                feats.append(InvRes(cin, c(ch), s if i == 0 else 1, t))
                cin = c(ch)
        feats.append(ConvBNAct(cin, 160, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(160, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)
