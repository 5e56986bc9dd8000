"""The API contract: request and response bodies of /v1 (openapi/openapi.json is generated from these)."""
from service.schemas.anomaly import (
    AnomalyFitRequest, AnomalyFitResult, AnomalyModel, AnomalyModelList, AnomalyScoreRequest, AnomalyScoreResult,
    ThresholdsPatch,
)
from service.schemas.colorization import ColorizationRequest, ColorizationResult, Guidance, Stroke
from service.schemas.common import ImageOutput, JobError, JobStatus, Problem, Upload
from service.schemas.jobs import Job, JobLogs, JobMetrics, JobPage
from service.schemas.subject import (
    PriorPreservation, SubjectGenerationRequest, SubjectGenerationResult, SubjectModel, SubjectModelList,
    SubjectModelRequest, SubjectModelResult, TuningSettings,
)
from service.schemas.video import (
    KvSharing, TunedVideoModel, TunedVideoModelPage, VideoEditRequest, VideoEditResult, VideoGenerationRequest,
    VideoGenerationResult, video_frame_count,
)

__all__ = ["AnomalyFitRequest", "AnomalyFitResult", "AnomalyModel", "AnomalyModelList", "AnomalyScoreRequest",
           "AnomalyScoreResult", "ThresholdsPatch", "ColorizationRequest", "ColorizationResult", "Guidance", "ImageOutput", "Job", "JobError", "JobLogs", "JobMetrics", "JobPage",
           "JobStatus", "KvSharing", "Problem", "Stroke", "TunedVideoModel", "TunedVideoModelPage", "Upload", "VideoEditRequest", "VideoEditResult", "VideoGenerationRequest", "VideoGenerationResult",
           "video_frame_count", "PriorPreservation", "SubjectGenerationRequest", "SubjectGenerationResult", "SubjectModel",
           "SubjectModelList", "SubjectModelRequest", "SubjectModelResult", "TuningSettings"]
