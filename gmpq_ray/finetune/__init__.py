"""gmpq_ray.finetune: distributed finetuning of a policy on Ray Train (the API function is
:func:`gmpq_ray.api.finetune`): the job, the workers' loop, the run folder's outputs."""
