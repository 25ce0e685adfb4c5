"""Continual learning with prompts on frozen ViTs: prefix attention, the prompt learners
(L2P, DualPrompt, CODA-Prompt) and CDL's teacher-to-student distillation."""
