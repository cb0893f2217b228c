# Environment for compress on the GPU machine (see ../shared/GPU.md step 2).
export PYTHONPATH=/tmp/site GPTQMODEL_OFFLINE=1 HF_HUB_OFFLINE=1 TORCH_CUDA_ARCH_LIST=9.0 TOKENIZERS_PARALLELISM=false
