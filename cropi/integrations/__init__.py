"""cropi inside other training frameworks. ``cropi.integrations.trl``: a plug-in for your own TRL
``GRPOTrainer`` (single process). For verl on clusters see ``cropi.integrations.verl_sampler``."""
