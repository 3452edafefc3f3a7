"""MusicLDM (spectrogram latents) plugin."""
