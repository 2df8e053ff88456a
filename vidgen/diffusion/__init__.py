"""Rectified-flow maths (flow.py: interpolation, velocity target, timestep sampling and shift, loss,
caption dropout) and the ODE samplers with classifier-free guidance (samplers.py)."""
