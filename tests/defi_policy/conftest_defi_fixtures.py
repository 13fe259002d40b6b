import pytest


@pytest.fixture(scope='session')
def tiny_policy():
    from defi_ros_testkit import make_tiny_policy
    return make_tiny_policy()


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory, tiny_policy):
    from defi_ros_testkit import save_tiny_checkpoint
    return save_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', tiny_policy)
