"""JAX's persistent compilation cache: the option of every command that compiles at start."""

import jax


# The server's programs take 0.2-0.6 s each to compile here, under JAX's default threshold (1 s):
# with it, the cache kept none of them.
MIN_COMPILE_S = 0.1


def use(folder: str) -> None:
  """Keeps compiled programs in `folder` (nothing for ''): call before the first compile."""
  if folder:
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
