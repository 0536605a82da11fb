"""Evaluation: arms -> lm-eval tasks -> scores with CIs -> forgetting -> report."""
