"Cut any model into layer groups (stem, stages, head) for discriminative learning rates."
# The groups are checked to partition the model's parameters.
# The pipeline, a file each: blocks (records, the model's walks) -> timm / generic strategies -> fixes -> plan
#   -> groups (split_stages, split_blocks, split_n, split_at) -> check, table;
#   splitters wrap the group functions for fastai.
from __future__ import annotations

from ..forward import first_use_order
from .blocks import Block, Plan
from .check import GroupError, check_groups, group_names, order_violations
from .groups import balance, split_at, split_blocks, split_n, split_stages, stage_blocks
from .plan import StrategyError, plan
from .splitters import (Splitter, at_splitter, block_splitter, n_splitter, named_groups, splitter,
                        stage_splitter)
from .table import GroupTable, group_table

__all__ = ['split_stages', 'split_blocks', 'split_n', 'split_at', 'check_groups', 'group_table',
           'stage_splitter', 'block_splitter', 'n_splitter', 'at_splitter', 'splitter', 'named_groups',
           'Splitter', 'GroupError', 'GroupTable', 'Block', 'Plan', 'plan', 'StrategyError', 'stage_blocks',
           'group_names', 'balance', 'first_use_order', 'order_violations']
