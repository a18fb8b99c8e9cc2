"""The OpenAI Images API's bodies as Darkroom reads and answers them (``gateway.routes_openai``).

OpenAI's own fields that Darkroom cannot honour (quality, style, background, moderation,
output_format…) are accepted and ignored, so clients written for OpenAI work unchanged; any other
unknown field is refused, as on every Darkroom route. Darkroom's render fields
(``num_inference_steps``, ``negative_prompt``, ``seed``, ``guidance_scale``…) may be added, with
the OpenAI SDK's ``extra_body``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.schemas import MAX_SEED, Angles, Guidance, NegativePrompt, Prompt, Steps, SubmitRequest

MAX_IMAGES = 10
ResponseFormat = Literal["url", "b64_json"]

_MODEL_DOC = "A Darkroom model route (GET /v1/models). Omitted: the catalogue's default route."
_SIZE_DOC = (
    "`WIDTHxHEIGHT` in pixels, within the route's limits and a multiple of its size step "
    "(GET /api/models); `auto` or omitted: the route's default size (edits: the input image's "
    "aspect ratio within the limits)."
)
_SEED_DOC = "The first image's seed; image i gets seed + i. Omitted: a random one."
_IGNORED_DOC = "Accepted for compatibility with OpenAI clients; Darkroom ignores it."


class _OpenAIFields(SubmitRequest):
    """What both routes share: OpenAI's fields, the ignored ones, and Darkroom's render fields."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str | None, Field(description=_MODEL_DOC)] = None
    n: Annotated[int | None, Field(ge=1, le=MAX_IMAGES, description="Images to make (jobs).")] = (
        None
    )
    size: Annotated[str | None, Field(max_length=32, description=_SIZE_DOC)] = None
    response_format: Annotated[
        ResponseFormat | None,
        Field(description="`url` (default): the results' URLs; `b64_json`: the PNG bytes."),
    ] = None
    stream: Annotated[
        bool | None, Field(description="Only false: Darkroom answers with the finished images.")
    ] = None
    # OpenAI's, ignored: nothing in a diffusers pipeline corresponds to them.
    background: Annotated[str | None, Field(description=_IGNORED_DOC)] = None
    quality: Annotated[str | None, Field(description=_IGNORED_DOC)] = None
    output_format: Annotated[
        str | None, Field(description="Ignored: results are PNG (the answer says so).")
    ] = None
    output_compression: Annotated[int | None, Field(description=_IGNORED_DOC)] = None
    partial_images: Annotated[int | None, Field(description=_IGNORED_DOC)] = None
    user: Annotated[str | None, Field(description=_IGNORED_DOC)] = None
    safety_identifier: Annotated[str | None, Field(description=_IGNORED_DOC)] = None
    complexity: Annotated[str | None, Field(description=_IGNORED_DOC)] = None
    frame_count: Annotated[int | None, Field(description=_IGNORED_DOC)] = None
    frame_duration_ms: Annotated[int | None, Field(description=_IGNORED_DOC)] = None
    # Darkroom's render fields; omitted: the route's defaults.
    negative_prompt: NegativePrompt = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED, description=_SEED_DOC)] = None
    angles: Angles = None


class ImageGenerationRequest(_OpenAIFields):
    """``POST /v1/images/generations``: n text-to-image jobs with consecutive seeds."""

    prompt: Prompt
    style: Annotated[str | None, Field(description=_IGNORED_DOC)] = None
    moderation: Annotated[str | None, Field(description=_IGNORED_DOC)] = None
    svg: Annotated[dict[str, Any] | None, Field(description=_IGNORED_DOC)] = None


class ImageEditForm(_OpenAIFields):
    """``POST /v1/images/edits``: multipart fields besides the ``image`` file (or ``image[]``,
    one file); ``mask`` is refused, no route can inpaint."""

    prompt: Annotated[str, Field(min_length=1, max_length=2000)]
    input_fidelity: Annotated[str | None, Field(description=_IGNORED_DOC)] = None
    strength: Annotated[
        float, Field(gt=0.0, le=1.0, description="How far the result departs from the image.")
    ] = 0.8

    @field_validator("angles", mode="before")
    @classmethod
    def _split_angles(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class ImageData(BaseModel):
    """One image: its URL or its base64 PNG, as ``response_format`` asked."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    """The finished images, in job order (a multi-angle route gives each job's views in turn)."""

    created: int = Field(description="Unix seconds.")
    data: list[ImageData]
    size: str | None = Field(default=None, description="`WIDTHxHEIGHT` of the images.")
    output_format: Literal["png"] = "png"


class OpenAIModel(BaseModel):
    """A model route, in OpenAI's model shape."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    """The routes that make images (text-to-image or image-to-image)."""

    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every error on the OpenAI routes, 401 and 429 included: OpenAI's shape."""

    error: OpenAIErrorDetail
