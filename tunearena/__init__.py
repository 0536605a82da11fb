"""tunearena: fine-tune on Ray + DeepSpeed, compare against RAG, report what is worth it."""

__version__ = "0.1.0"
