"""The front over one loaded model: every analysis, callable from sync code (`Analyzer`) or async code
(`Analyzer.aio`), with calls on one model serialised; and the seed's lens-only `ModelAnalyzer`.

The CLI, the web app and the MoE router build on this layer; it imports the analyses, never the reverse.
"""

from mechscope.api.analyzer import Analyzer, AsyncAnalyzer
from mechscope.api.expert_router import ExpertRouter
from mechscope.api.model_analyzer import AnalysisConfig, ModelAnalyzer

__all__ = ["AnalysisConfig", "Analyzer", "AsyncAnalyzer", "ExpertRouter", "ModelAnalyzer"]
