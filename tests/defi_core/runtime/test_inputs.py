"""ROS-free instruction checks."""
import pytest

from defi_core.runtime.inputs import check_instruction


def test_check_instruction_refuses_nul_replacement_characters_and_length():
    assert check_instruction('öffne die Schublade', 100) == 'öffne die Schublade'
    with pytest.raises(ValueError, match='data: contains a NUL'):
        check_instruction('open\x00 the drawer')
    with pytest.raises(ValueError, match='instruction: not valid UTF-8'):
        check_instruction('open the dr\ufffdawer', field='instruction')
    with pytest.raises(ValueError, match='1001 characters, more than max_instruction_chars=1000'):
        check_instruction('x' * 1001, 1000)
    assert check_instruction('x' * 5000, 0) == 'x' * 5000          # 0 = no bound
