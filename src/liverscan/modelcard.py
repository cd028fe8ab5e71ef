"""Model card: reading it and rendering it as Markdown."""

from __future__ import annotations

import json
from pathlib import Path

from liverscan.errors import RunDirError


def read_card(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "model_card.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no model_card.json (is this a finished 'liverscan train' run?)")
    return json.loads(path.read_text())


def render_card_markdown(card: dict) -> str:
    t = card["training"]
    v = card.get("validation", {})
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"**{card['intended_use']}**",
        "",
        f"- Task: {card['task']}",
        f"- Classes: {', '.join(card['classes'])}",
        f"- Class map: {', '.join(f'{k} -> {c}' for k, c in card['class_map'].items())}",
        f"- Input: {card['input']['size'][0]}x{card['input']['size'][1]} RGB; {card['input']['scaling']}",
        f"- Architecture: {card['architecture']['backbone']}; head {card['architecture']['head']}",
        f"- Parameters: {card['architecture']['parameters']['total']:,} total, "
        f"{card['architecture']['parameters']['trainable']:,} trainable",
        f"- Backbone weights: {card['backbone_weights']['description']} ({card['backbone_weights']['spec']})",
        f"- Data: manifest {card['data']['manifest_hash'][:16]} from {', '.join(card['data']['sources'])}",
        f"- Training: {t['mode']} mode, loss {t['loss']}, {t['optimizer']}, batch {t['batch_size']}, "
        f"{t['epochs_run']} epochs (limit {t['epoch_limit']}), best epoch {t['best']['epoch']} ({t['best']['stage']}), "
        f"seed {t['seed']}, {t['seconds']} s on {t['device']} ({t['backend']})",
        f"- Validation (n={v.get('n')}): accuracy {v.get('accuracy')}, balanced accuracy {v.get('balanced_accuracy')}",
    ]
    if card.get("operating_point"):
        lines.append(f"- Operating point: {card['operating_point'].get('description', '')}")
    lines.append("")
    return "\n".join(lines)
