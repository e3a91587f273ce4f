"""What a VM is, as far as money is concerned."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

TierName = Literal["small", "medium", "large", "enterprise"]

# (vCPU, GB RAM) of each tier, from the product's price list.
TIER_SHAPES: dict[str, tuple[int, int]] = {
    "small": (1, 2),
    "medium": (2, 4),
    "large": (4, 8),
    "enterprise": (8, 16),
}


class VmSpec(BaseModel):
    """A VM size. A tier fixes vCPU and RAM; a custom size (tier None) is priced per resource."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: TierName | None = None
    vcpu: int = Field(ge=1, le=128)
    ram_gb: int = Field(ge=1, le=2048)
    disk_gb: int = Field(default=50, ge=10, le=65536)

    @model_validator(mode="after")
    def _tier_matches_size(self) -> Self:
        if self.tier is not None and TIER_SHAPES[self.tier] != (self.vcpu, self.ram_gb):
            vcpu, ram = TIER_SHAPES[self.tier]
            raise ValueError(f"tier {self.tier} is {vcpu} vCPU / {ram} GB")
        return self

    @classmethod
    def of_tier(cls, tier: TierName, disk_gb: int = 50) -> VmSpec:
        vcpu, ram = TIER_SHAPES[tier]
        return cls(tier=tier, vcpu=vcpu, ram_gb=ram, disk_gb=disk_gb)
