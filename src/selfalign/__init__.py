"""selfalign: self-alignment with instruction backtranslation (Li et al. 2023), with LoRA."""

__version__ = "0.1.0"
