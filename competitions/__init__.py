"""Competition plugins: every module here is imported by the registry (pipeline.plugin.registry), and each plugin registers itself."""
