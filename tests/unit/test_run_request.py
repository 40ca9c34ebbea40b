import pytest
from pydantic import ValidationError

from app.schemas import RunRequest

OK = {"email": "a@b.c"}


@pytest.mark.parametrize(
    "image",
    [
        "localhost/faas-echo",
        "localhost/faas-echo:latest",
        "ealen/echo-server:latest",
        "busybox",
        "registry.example.com:5000/team/app:v1.2.3",
        "ghcr.io/org/app@sha256:" + "a" * 64,
        "my_image__x/sub-part:TAG_1",
    ],
)
def test_valid_image_references(image: str) -> None:
    assert RunRequest(image_name=image, **OK).image_name == image


@pytest.mark.parametrize(
    "image",
    [
        "UPPER/case",
        "has space",
        "-lead",
        "trailing-",
        "a//b",
        "a:b:c",
        "img@sha256:short",
        "x:" + "t" * 200,
    ],
)
def test_invalid_image_references(image: str) -> None:
    with pytest.raises(ValidationError, match="image_name"):
        RunRequest(image_name=image, **OK)


def test_env_names_must_be_identifiers() -> None:
    with pytest.raises(ValidationError, match="invalid variable name"):
        RunRequest(image_name="busybox", email="a@b.c", env={"A-B": "1"})


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="imagename"):
        RunRequest.model_validate({"image_name": "busybox", "email": "a@b.c", "imagename": "x"})
