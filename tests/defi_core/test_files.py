"""replace_directory: a finished temporary directory takes the place of the destination."""
from defi_core.files import replace_directory


def test_replace_directory_creates_and_replaces(tmp_path):
    dest = tmp_path / 'out'
    first = tmp_path / '.out.tmp1'
    first.mkdir()
    (first / 'a.txt').write_text('one')
    replace_directory(first, dest)
    assert (dest / 'a.txt').read_text() == 'one' and not first.exists()
    second = tmp_path / '.out.tmp2'
    second.mkdir()
    (second / 'b.txt').write_text('two')
    replace_directory(second, dest)
    # the old contents are gone, nothing is left beside the destination
    assert sorted(p.name for p in dest.iterdir()) == ['b.txt']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_temp_directory_for_refuses_an_existing_destination_unless_overwrite(tmp_path):
    import pytest

    from defi_core.files import temp_directory_for
    dest = tmp_path / 'sub' / 'cache'
    tmp = temp_directory_for(dest)
    assert tmp.is_dir() and tmp.parent == dest.parent and list(tmp.iterdir()) == []
    (tmp / 'stale.txt').write_text('x')
    replace_directory(tmp, dest)
    with pytest.raises(FileExistsError, match='cache exists; pass overwrite=True'):
        temp_directory_for(dest)
    again = temp_directory_for(dest, overwrite=True)
    assert list(again.iterdir()) == [] and (dest / 'stale.txt').exists()
