for d in 1.0 0.3 3.0 0.1; do python3 gptq_run.py none $d; done
for d in 1.0 0.3 3.0 0.1; do python3 gptq_run.py random $d; done
