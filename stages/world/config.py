"""Configuration of the synthetic demo world (sizes, timing, proposal noise)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WorldConfig(BaseModel):
    """Everything that decides a demo world; the same config always builds the same world.

    Times are in seconds, sizes in pixels. Keyframes follow the AVA convention: one per
    second, timestamp ``t`` is ``t - timestamp_offset`` seconds into the video file, and
    the first and last ``keyframe_margin_s`` seconds carry no keyframe.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    n_train_videos: int = Field(8, ge=1)
    n_val_videos: int = Field(4, ge=1)
    duration_s: int = Field(40, ge=8)
    fps: int = Field(8, ge=2, le=60)
    width: int = Field(160, ge=64)
    height: int = Field(120, ge=48)
    timestamp_offset: int = Field(900, ge=0)
    keyframe_margin_s: int = Field(2, ge=1)
    # Extra people per video who wander about (beyond the conversation pair, the table
    # user and the optional onlooker); a video has 3..(3 + loners_max + 1) identities.
    loners_min: int = Field(0, ge=0)
    loners_max: int = Field(1, ge=0)
    # Probability that a video has an onlooker standing near the table.
    onlooker_prob: float = Field(0.7, ge=0.0, le=1.0)
    # The table user's story in videos after the first two of a split (those two always
    # hold one "return" and one "bring"): pick the object up and put it back later (the
    # long-term "put back"), bring one in and put it down (its look-alike), or neither.
    return_story_prob: float = Field(0.45, ge=0.0, le=1.0)
    bring_story_prob: float = Field(0.25, ge=0.0, le=1.0)
    # Probability that one conversation partner leaves while the other waits.
    wait_story_prob: float = Field(0.35, ge=0.0, le=1.0)
    # Proposal noise: each box edge moves by N(0, (jitter * box side)^2), a fraction of
    # persons is missed, and low-score false positives appear at a Poisson rate.
    proposal_jitter: float = Field(0.05, ge=0.0, le=0.5)
    proposal_miss_rate: float = Field(0.05, ge=0.0, le=1.0)
    proposal_false_positives_per_keyframe: float = Field(0.3, ge=0.0)
    # Fraction of keyframes listed as excluded (their GT rows are left out, as in AVA).
    excluded_fraction: float = Field(0.03, ge=0.0, le=0.5)
    # x264 constant rate factor: low so that 3-4 pixel objects survive compression.
    crf: int = Field(12, ge=0, le=51)

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        if self.width % 2 or self.height % 2:
            raise ValueError(
                f"WorldConfig: width and height must be even for yuv420p video, "
                f"got {self.width}x{self.height}"
            )
        if self.duration_s < 2 * self.keyframe_margin_s + 1:
            raise ValueError(
                f"WorldConfig: duration_s={self.duration_s} leaves no keyframe between the "
                f"{self.keyframe_margin_s} s margins"
            )
        if self.return_story_prob + self.bring_story_prob > 1.0 + 1e-9:
            raise ValueError(
                f"WorldConfig: return_story_prob + bring_story_prob = "
                f"{self.return_story_prob + self.bring_story_prob:g} > 1"
            )
        if self.loners_min > self.loners_max:
            raise ValueError(
                f"WorldConfig: loners_min={self.loners_min} > loners_max={self.loners_max}"
            )
        return self

    @property
    def n_frames(self) -> int:
        """Frames per video."""
        return self.duration_s * self.fps

    @property
    def keyframe_seconds(self) -> range:
        """Seconds into the file that carry a keyframe."""
        return range(self.keyframe_margin_s, self.duration_s - self.keyframe_margin_s + 1)

    @classmethod
    def tiny(cls, seed: int = 0) -> WorldConfig:
        """2 train + 2 val videos of 20 s at 6 fps, 128x96: builds in a few seconds."""
        return cls(
            seed=seed,
            n_train_videos=2,
            n_val_videos=2,
            duration_s=20,
            fps=6,
            width=128,
            height=96,
            loners_max=1,
        )

    @classmethod
    def default(cls, seed: int = 0) -> WorldConfig:
        """The demo size: 8 train + 4 val videos of 40 s at 8 fps, 160x120."""
        return cls(seed=seed)


class TubeWorldConfig(BaseModel):
    """Everything that decides a tube world; the same config builds the same files.

    ``format: tubes`` tells it apart from the AVA world's config in a pipeline config.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["tubes"] = "tubes"
    seed: int = 0
    n_train_videos: int = Field(8, ge=1)
    n_val_videos: int = Field(4, ge=1)
    n_frames: int = Field(64, ge=24)
    fps: int = Field(10, ge=2, le=60)
    width: int = Field(160, ge=64)
    height: int = Field(120, ge=48)
    persons_min: int = Field(2, ge=1)
    persons_max: int = Field(3, ge=1)
    action_frames: tuple[int, int] = (12, 28)  # min, max tube length in frames
    # keyframe stride per split written to dataset.yaml (val 1: every frame, frame-mAP)
    train_keyframe_stride: int = Field(2, ge=1)
    proposal_jitter: float = Field(0.04, ge=0.0, le=0.5)
    crf: int = Field(12, ge=0, le=51)
