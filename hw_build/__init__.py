"""ResBin: hw_build stage.

FINN (finn-plus) is imported lazily: call `hw_build.finn_env.ensure_finn()` before any `finn`
import, so `import hw_build` stays cheap and works without FINN's environment.
"""
