"""Callbacks that own the recipe's knobs, checkpoint naming, monitoring, and the files ``predict`` writes."""

from mm_lightning.callbacks.caption_checks import CaptionChecks
from mm_lightning.callbacks.copy_check import CopyCheck
from mm_lightning.callbacks.emoji_probe import EmojiIdentityProbe
from mm_lightning.callbacks.final_validation import FinalValidation
from mm_lightning.callbacks.lr_schedule import LRSchedulerResume, ReWarmup
from mm_lightning.callbacks.mixing import ProgressiveMixing
from mm_lightning.callbacks.nonfinite import NonFiniteGuard
from mm_lightning.callbacks.passkey import PasskeyEvaluation
from mm_lightning.callbacks.prediction_writer import PredictionWriter
from mm_lightning.callbacks.rope_switch import RoPEBaseSwitch
from mm_lightning.callbacks.stage_checkpoint import StageCheckpoint
from mm_lightning.callbacks.throughput import TokenThroughputMonitor

__all__ = [
    "CaptionChecks",
    "CopyCheck",
    "EmojiIdentityProbe",
    "FinalValidation",
    "LRSchedulerResume",
    "NonFiniteGuard",
    "PasskeyEvaluation",
    "PredictionWriter",
    "ProgressiveMixing",
    "ReWarmup",
    "RoPEBaseSwitch",
    "StageCheckpoint",
    "TokenThroughputMonitor",
]
