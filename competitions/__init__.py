"""Competition plugins: every module here is imported by the registry (pipeline.registry), and each plugin registers itself."""
