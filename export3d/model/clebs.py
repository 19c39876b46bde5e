"""Learned basis scaling (LeBS) and its contrastive pre-training (CLeBS), paper Sec. 3.1 and supp. 6.2.

``f_e``: beta ``[B, 64]`` -> FC(64 -> 256) - LeakyReLU - FC(256 -> n) = lambda ``[B, n]``, then
``beta' = V @ lambda`` ``[B, d]`` where ``V [d, n]`` is the orthonormal Q factor of a learned ``[d, n]``
weight (columns sign-fixed by ``sign(diag(R))`` so that V is a deterministic function of the weight).

``f_I``: SE-ResNet-18 + FC -> d, used only for pre-training. The loss pulls ``f_e(beta_k)`` towards the
embedding of its own frame ``X_k`` (the positive) and away from other frames ``X_j`` of the same clip
(the negatives, which share the appearance), so f_e learns an appearance-free expression code.

InfoNCE: we use the standard form (CPC / MoCo / CLIP, the works the paper cites), whose denominator
sums over the positive *and* the negatives. Eq. 1 of the paper writes ``sum_{j != k}`` in the
denominator (the positive excluded); pass ``include_positive=False`` for that literal form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export3d.model.config import LeBSConfig


# ----------------------------------------------------------------------------------------------- helpers
def orthonormal_basis(weight: torch.Tensor) -> torch.Tensor:
    """Sign-fixed reduced QR: ``weight [d, n]`` (d >= n) -> ``V [d, n]`` with ``V^T V = I``.

    Column i of Q is multiplied by ``sign(R_ii)`` (zero counts as +1), which makes R's diagonal
    non-negative and V unique for a full-rank weight. Computed in fp32 (fp64 stays fp64).
    """
    w = weight if weight.dtype == torch.float64 else weight.float()
    q, r = torch.linalg.qr(w, mode="reduced")  # [d, n], [n, n]
    sign = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)  # [n]
    return q * sign


def infonce_loss(
    expression_embedding: torch.Tensor,  # [B, d], f_e(beta_k)
    image_embedding: torch.Tensor,  # [B, 1 + K, d], index 0 = f_I(X_k) (positive), 1..K = f_I(X_j), j != k
    temperature: float = 0.07,
    include_positive: bool = True,
) -> torch.Tensor:
    """Mean over B of ``-log(exp(cos_pos / tau) / sum_j exp(cos_j / tau))`` -> scalar.

    ``include_positive=True`` sums the denominator over the positive and the K negatives (standard
    InfoNCE, a cross-entropy with target 0); ``False`` sums over the negatives only (paper Eq. 1 as printed).
    """
    if expression_embedding.dim() != 2 or image_embedding.dim() != 3:
        raise ValueError(
            "infonce_loss: expression_embedding must be [B, d] and image_embedding [B, 1 + K, d], got "
            f"{tuple(expression_embedding.shape)} and {tuple(image_embedding.shape)}"
        )
    B, d = expression_embedding.shape
    if image_embedding.shape[0] != B or image_embedding.shape[2] != d:
        raise ValueError(
            f"infonce_loss: image_embedding {tuple(image_embedding.shape)} does not match "
            f"expression_embedding {tuple(expression_embedding.shape)} (want [B, 1 + K, d])"
        )
    if image_embedding.shape[1] < 2:
        raise ValueError("infonce_loss: need at least one negative (image_embedding.shape[1] >= 2)")
    cos = F.cosine_similarity(expression_embedding[:, None, :].float(), image_embedding.float(), dim=-1)  # [B, 1+K]
    logits = cos / temperature
    denominator = logits if include_positive else logits[:, 1:]
    return (torch.logsumexp(denominator, dim=1) - logits[:, 0]).mean()


# ----------------------------------------------------------------------------------------------- blocks
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channel gates from global average pooling."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))  # [B, C, 1, 1]
        return x * gate


class SEBasicBlock(nn.Module):
    """ResNet basic block with squeeze-and-excitation before the residual sum (SE-ResNet)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, reduction: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcite(out_channels, reduction)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, Cin, H, W]`` -> ``[B, Cout, H/stride, W/stride]``."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.se(self.bn2(self.conv2(y)))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ImageEncoder(nn.Module):
    """f_I: SE-ResNet-18 (or a smaller SE-ResNet for ``tiny``) + FC -> d. Images ``[N, 3, H, W]`` in [-1, 1]."""

    def __init__(self, config: LeBSConfig):
        super().__init__()
        c0 = config.image_channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, c0, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks, prev = [], c0
        for stage, (width, count) in enumerate(zip(config.image_channels, config.image_blocks, strict=True)):
            for i in range(count):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(SEBasicBlock(prev, width, stride, config.se_reduction))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(prev, config.dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """torchvision's ResNet init: Kaiming fan-out convs, unit BatchNorms, default-scaled FC."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[N, 3, H, W]`` -> embeddings ``[N, d]``."""
        x = self.blocks(self.stem(images))  # [N, C, H/32, W/32]
        return self.fc(x.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------------------------- top modules
class LeBS(nn.Module):
    """f_e: ``beta [B, 64] -> beta' = V @ lambda [B, d]`` with a learned orthonormal basis V ``[d, n]``."""

    def __init__(self, config: LeBSConfig):
        super().__init__()
        self.expression_dim, self.n_basis, self.dim = config.expression_dim, config.n_basis, config.dim
        self.fc1 = nn.Linear(config.expression_dim, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.n_basis)
        self.basis_weight = nn.Parameter(torch.empty(config.dim, config.n_basis))  # W, V = QR(W)
        self.frozen = False
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier FCs with zero biases; W ~ N(0, 1) (full rank with probability 1, so QR is well defined)."""
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.basis_weight)

    def basis(self) -> torch.Tensor:
        """The orthonormal basis ``V [d, n]`` (columns v_1..v_n)."""
        return orthonormal_basis(self.basis_weight)

    def coefficients(self, expression: torch.Tensor) -> torch.Tensor:
        """lambda = FC(act(FC(beta))): ``[B, 64]`` -> ``[B, n]``. Edit these and call :meth:`from_coefficients`."""
        return self.fc2(F.leaky_relu(self.fc1(expression), 0.2))

    def from_coefficients(self, coefficients: torch.Tensor) -> torch.Tensor:
        """beta' = sum_i lambda_i v_i: ``[B, n]`` -> ``[B, d]``."""
        V = self.basis().to(coefficients.dtype)  # [d, n]
        return coefficients @ V.T

    @staticmethod
    def scale_coefficients(coefficients: torch.Tensor, index: int, factor: float) -> torch.Tensor:
        """Basis scaling for editing (paper Fig. 9 / 13): ``lambda_index <- factor * lambda_index``.

        ``[B, n]`` -> ``[B, n]`` (a new tensor). E.g. factor sweeping 1 -> -7 along v_1 opens the mouth.
        """
        if not -coefficients.shape[-1] <= index < coefficients.shape[-1]:
            raise IndexError(f"scale_coefficients: index {index} out of range for n = {coefficients.shape[-1]}")
        scale = torch.ones(coefficients.shape[-1], dtype=coefficients.dtype, device=coefficients.device)
        scale[index] = factor
        return coefficients * scale

    def freeze(self) -> LeBS:
        """Freeze f_e after CLeBS pre-training: no gradients, and it stays frozen (paper Sec. 3.1)."""
        self.requires_grad_(False)
        self.frozen = True
        return self

    def forward(self, expression: torch.Tensor) -> torch.Tensor:
        """beta ``[B, 64]`` -> beta' ``[B, d]``."""
        return self.from_coefficients(self.coefficients(expression))

    def extra_repr(self) -> str:
        return f"expression_dim={self.expression_dim}, n_basis={self.n_basis}, dim={self.dim}, frozen={self.frozen}"


class CLeBS(nn.Module):
    """Contrastive pre-training wrapper: ``lebs`` (f_e, kept) and ``image_encoder`` (f_I, discarded after).

    After pre-training, load ``clebs.lebs.state_dict()`` into ``Export3D.lebs`` and freeze it.
    """

    def __init__(self, config: LeBSConfig):
        super().__init__()
        self.temperature, self.num_negatives = config.temperature, config.num_negatives
        self.lebs = LeBS(config)
        self.image_encoder = ImageEncoder(config)

    def initialize_weights(self) -> None:
        self.lebs.initialize_weights()
        self.image_encoder.initialize_weights()

    def forward(self, images: torch.Tensor, expression: torch.Tensor, include_positive: bool = True) -> torch.Tensor:
        """Eq. 1 with explicit negatives -> scalar loss.

        images ``[B, 1 + K, 3, H, W]``: index 0 is the frame of ``expression`` (positive), 1..K other
        frames of the same clip (negatives); expression ``[B, 64]``.
        """
        if images.dim() != 5 or images.shape[2] != 3 or images.shape[0] != expression.shape[0]:
            raise ValueError(f"CLeBS: images must be [B, 1 + K, 3, H, W] with B = {expression.shape[0]}, "
                             f"got {tuple(images.shape)}")  # fmt: skip
        B, S = images.shape[:2]
        image_embedding = self.image_encoder(images.flatten(0, 1)).view(B, S, -1)  # [B, 1+K, d]
        return infonce_loss(self.lebs(expression), image_embedding, self.temperature, include_positive)

    def clip_loss(self, images: torch.Tensor, expression: torch.Tensor, include_positive: bool = True) -> torch.Tensor:
        """Eq. 1 with every frame of a clip as an anchor and the clip's other frames as its negatives.

        images ``[G, N, 3, H, W]`` and expression ``[G, N, 64]``: G clips of N frames (K = N - 1 negatives
        per anchor; the paper's K = 32 means N = 33). Each image is encoded once. -> scalar loss.
        """
        if images.dim() != 5 or expression.dim() != 3 or images.shape[:2] != expression.shape[:2]:
            raise ValueError(f"CLeBS.clip_loss: images [G, N, 3, H, W] and expression [G, N, 64] expected, "
                             f"got {tuple(images.shape)} and {tuple(expression.shape)}")  # fmt: skip
        G, N = images.shape[:2]
        image_embedding = self.image_encoder(images.flatten(0, 1)).view(G, N, -1)  # [G, N, d]
        expression_embedding = self.lebs(expression.flatten(0, 1)).view(G, N, -1)  # [G, N, d]
        # Row k lists anchor k's candidates: its own frame X_k (the positive) first, then X_{k+1}, ..., X_{k-1}.
        order = (torch.arange(N, device=images.device)[:, None] + torch.arange(N, device=images.device)) % N  # [N, N]
        candidates = image_embedding[:, order]  # [G, N, N, d]
        return infonce_loss(
            expression_embedding.flatten(0, 1), candidates.flatten(0, 1), self.temperature, include_positive
        )
