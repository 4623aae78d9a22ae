"""The trial entry points, where callers have always imported them (see :mod:`compvae.pipeline`)."""

from compvae.pipeline.data import TrialData, load_data, to_parent_resolution
from compvae.pipeline.outputs import read_result, split_timings, write_figures
from compvae.pipeline.state import epoch_history
from compvae.pipeline.trial import ReportFn, prepare_parent, run_trial

__all__ = ["ReportFn", "TrialData", "epoch_history", "load_data", "prepare_parent", "read_result", "run_trial",
           "split_timings", "to_parent_resolution", "write_figures"]
