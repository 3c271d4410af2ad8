"""How a run tells the outside world and protects its disk: webhooks (``webhooks``), hook
scripts (``hooks``) and the free-space guard before checkpoints (``disk_guard``). The worker
reaches them through ``run_notifier.RunNotifier``; ``checks`` validates their options before
any Ray work."""
