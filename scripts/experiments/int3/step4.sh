python3 gptq_run.py none 1.0 diag
python3 gptq_run.py none 0.3 diag
