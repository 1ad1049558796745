"""`edgeae profile`: latency, throughput and memory of a bundle's graphs and codec paths, next to baselines."""

from edgeae.profiling.engine import ProfileSettings, profile_bundle, quick_profile
from edgeae.profiling.report import Measurement, ProfileReport, Timing

__all__ = ["Measurement", "ProfileReport", "ProfileSettings", "Timing", "profile_bundle", "quick_profile"]
