"""The denoising loop: ControlNet residuals into the UNet, control modes, samplers and their
planned steps, prompt embeddings. Light modules (control, schedulers) import no torch."""
