python3 nu_run.py
python3 gptq_run.py none 10.0
python3 gptq_run.py none 3.0 seq
python3 gptq_run.py none 3.0 nu
python3 gptq_run.py none 30.0
