"""Model registry and safetensors checkpoints."""
