"""The evaluation of a fine-tune against its base model on the run's held-out split: the same code in the local
workspace's job process and in the Azure ML command job (this folder is that job's code).

Heavy (torch, transformers, rouge-score, sacrebleu), so the Function App never imports it: the app only reads the
report it writes (`shared.protocol.EvaluationReport`). `python -m evaluation --help` runs it.
"""
