"""What makes generation faster: the fast path (fp16, channels_last, fused QKV, torch.compile),
the attention backend, the CPU precision, feature caching and the LCM-LoRA few-step sampler."""
