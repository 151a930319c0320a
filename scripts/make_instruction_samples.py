#!/usr/bin/env python
"""Generate the synthetic R&D-project instruction data (MISSION §2).

Three kinds of file go to ``data/samples/instructions``:

* ``raw_records.jsonl`` -- 60 R&D project records as the production source has them (``id, title,
  abstract, application_fields, keywords, program_type, phase, firm``), English or Korean (about a third),
  20 technology domains x 3 projects. Synthetic: firm names are invented.
* ``train/val/test.jsonl`` -- Alpaca records ``{"id", "instruction", "input", "output"}`` made from the raw
  records by fixed question templates (the stand-in for the teacher model of
  ``scripts/build_instructions.py``): 2 or 3 questions per record (2.5 on average, as in production),
  answered from the record itself (a sentence of the abstract, the application fields, firm and phase).
  ``instruction`` is the system instruction of the MISSION §2 prompt, ``input`` the question, ``output``
  the answer. Split 48/6/6 by source record, so no project is in two splits.
* ``questions.jsonl`` -- 10 evaluation questions ``{"id", "question", "reference"}`` drawn from the test
  split (``id`` is the test record's), for the judge-model comparison of base and tuned models.

Fully determined by --seed (Python's ``random.Random`` only)::

    python scripts/make_instruction_samples.py
    python scripts/make_instruction_samples.py --seed 1 --out /tmp/instructions
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

# MISSION §2: the system instruction of the Alpaca prompt.
INSTRUCTION = "You are a national R&D planning expert and you will answer questions related to R&D planning inquiries."
SPLITS = ("train", "val", "test")
RECORDS_PER_SPLIT = {"train": 48, "val": 6, "test": 6}
N_QUESTIONS = 10

PROGRAMS = {
    "en": [
        "Industrial Technology Innovation Program",
        "Materials and Components Technology Development Program",
        "SME Technology Innovation Development Program",
        "Regional Innovation Cluster Program",
        "Public-Private Joint Investment Technology Development Program",
    ],
    "ko": ["산업기술혁신사업", "소재부품기술개발사업", "중소기업기술혁신개발사업", "지역혁신클러스터육성사업",
           "민관공동투자기술개발사업"],
}
PHASES = {
    "en": ["Phase 1 (basic research)", "Phase 2 (prototype development)",
           "Phase 3 (demonstration and commercialization)"],
    "ko": ["1단계(기초연구)", "2단계(시제품 개발)", "3단계(실증 및 사업화)"],
}
# Invented firm names: a house name and the domain's business.
FIRM_PREFIX = {
    "en": ["Hanbit", "Daeyang", "Nuri", "Seum", "Gaon", "Purun", "Haneul", "Doyak", "Saemteo", "Bitsaem", "Areum",
           "Onnuri"],
    "ko": ["한빛", "대양", "누리", "세움", "가온", "푸른", "하늘", "도약", "샘터", "빛샘", "아름", "온누리"],
}

# One entry per technology domain. Each has three project subjects; the abstract is
# "<goal>. <method>. <target>. <impact>." with the target number drawn from ``target_range``.
DOMAINS: list[dict] = [
    {
        "subjects_en": ["a silicon-carbon composite anode", "a single-crystal high-nickel cathode",
                        "a sulfide solid electrolyte"],
        "subjects_ko": ["실리콘-탄소 복합 음극재", "단결정 하이니켈 양극재", "황화물계 고체전해질"],
        "purpose_en": "for fast-charging electric-vehicle batteries",
        "purpose_ko": "전기차 고속충전 배터리용",
        "benefit_en": "that shortens charging time without losing cycle life",
        "benefit_ko": "수명 저하 없이 충전 시간을 단축하는",
        "method_en": (
            "The team combines precursor synthesis at pilot scale with surface coating and validates the material in "
            "4 Ah pouch cells"
        ),
        "method_ko": "파일럿 규모의 전구체 합성과 표면 코팅 공정을 결합하고 4 Ah 파우치 셀에서 소재 성능을 검증한다",
        "target_en": "a capacity retention of {x}% after 1,000 cycles at 3C charging",
        "target_ko": "3C 충전 조건에서 1,000 사이클 후 용량 유지율 {x}% 달성",
        "target_range": (85, 95, 0),
        "impact_en": "The material is meant to replace imported grades in domestic cell production",
        "impact_ko": "개발 소재는 국내 셀 생산에서 수입 소재를 대체하는 데 활용된다",
        "fields_en": ["electric vehicles", "energy storage systems", "battery materials"],
        "fields_ko": ["전기차", "에너지저장장치", "이차전지 소재"],
        "keywords_en": ["lithium-ion battery", "fast charging", "cycle life"],
        "keywords_ko": ["리튬이온전지", "고속충전", "수명 특성"],
        "firm_en": "Energy Materials Co., Ltd.", "firm_ko": "에너지소재",
    },
    {
        "subjects_en": ["a predictive maintenance platform", "a vision-based defect inspection system",
                        "a digital twin of the press line"],
        "subjects_ko": ["예지보전 플랫폼", "비전 기반 불량 검사 시스템", "프레스 라인 디지털 트윈"],
        "purpose_en": "for smart factories of automotive parts suppliers",
        "purpose_ko": "자동차 부품 협력사 스마트공장용",
        "benefit_en": "that cuts unplanned downtime on mixed-model lines",
        "benefit_ko": "다품종 생산 라인의 비계획 정지를 줄이는",
        "method_en": (
            "Vibration, current and image data from the shop floor are collected through an edge gateway and "
            "analysed with machine-learning models retrained every week"
        ),
        "method_ko": "현장의 진동, 전류, 영상 데이터를 엣지 게이트웨이로 수집하고 매주 재학습되는 머신러닝 모델로 분석한다",
        "target_en": "to cut unplanned downtime by {x}% at three pilot plants",
        "target_ko": "3개 실증 공장에서 비계획 정지 시간 {x}% 감소",
        "target_range": (20, 40, 0),
        "impact_en": "The results will be offered as a subscription service to small and medium-sized suppliers",
        "impact_ko": "성과는 중소 협력사를 위한 구독형 서비스로 보급된다",
        "fields_en": ["smart factory", "automotive parts", "industrial AI"],
        "fields_ko": ["스마트공장", "자동차 부품", "산업 인공지능"],
        "keywords_en": ["predictive maintenance", "edge computing", "anomaly detection"],
        "keywords_ko": ["예지보전", "엣지 컴퓨팅", "이상 탐지"],
        "firm_en": "Smart Systems Inc.", "firm_ko": "스마트시스템",
    },
    {
        "subjects_en": ["a chest X-ray triage AI", "a low-dose CT denoising model",
                        "a breast ultrasound lesion detection AI"],
        "subjects_ko": ["흉부 X선 영상 분류 인공지능", "저선량 CT 영상 잡음 제거 모델", "유방 초음파 병변 검출 인공지능"],
        "purpose_en": "for hospital radiology workflows",
        "purpose_ko": "병원 영상의학 진료용",
        "benefit_en": "that helps radiologists read urgent cases first",
        "benefit_ko": "응급 판독이 필요한 환자를 우선 선별하는",
        "method_en": (
            "Deep-learning models are trained on de-identified images from four partner hospitals and evaluated in a "
            "multi-centre reader study"
        ),
        "method_ko": "4개 협력 병원의 비식별 영상으로 딥러닝 모델을 학습하고 다기관 판독 연구로 성능을 평가한다",
        "target_en": "an area under the ROC curve of 0.{x} on an external validation set",
        "target_ko": "외부 검증 데이터에서 ROC 곡선 아래 면적 0.{x} 달성",
        "target_range": (90, 97, 0),
        "impact_en": "The software will be submitted for approval as a medical device",
        "impact_ko": "개발 소프트웨어는 의료기기 인허가를 거쳐 상용화한다",
        "fields_en": ["medical imaging", "digital healthcare", "clinical decision support"],
        "fields_ko": ["의료영상", "디지털 헬스케어", "임상 의사결정 지원"],
        "keywords_en": ["deep learning", "radiology", "computer-aided diagnosis"],
        "keywords_ko": ["딥러닝", "영상의학", "컴퓨터 보조 진단"],
        "firm_en": "Medical AI Co., Ltd.", "firm_ko": "메디컬AI",
    },
    {
        "subjects_en": ["an anion exchange membrane water electrolyzer", "a high-durability fuel cell stack",
                        "a low-iridium PEM electrolysis catalyst"],
        "subjects_ko": ["음이온교환막 수전해 장치", "고내구성 연료전지 스택", "저이리듐 PEM 수전해 촉매"],
        "purpose_en": "for green hydrogen production",
        "purpose_ko": "그린수소 생산용",
        "benefit_en": "that lowers the cost of hydrogen from renewable power",
        "benefit_ko": "재생에너지 기반 수소의 생산 단가를 낮추는",
        "method_en": (
            "Non-precious catalysts and membrane electrode assemblies are developed and tested in a 10 kW stack "
            "under variable load"
        ),
        "method_ko": "비귀금속 촉매와 막전극접합체를 개발하고 10 kW급 스택에서 변동 부하 조건으로 시험한다",
        "target_en": "a stack efficiency of {x}% with a degradation rate below 5 microvolts per hour",
        "target_ko": "시간당 5 마이크로볼트 이하의 열화율과 스택 효율 {x}% 달성",
        "target_range": (70, 80, 0),
        "impact_en": "The technology supports the national hydrogen economy roadmap",
        "impact_ko": "개발 기술은 국가 수소경제 로드맵 이행에 기여한다",
        "fields_en": ["hydrogen energy", "renewable energy", "electrochemistry"],
        "fields_ko": ["수소에너지", "재생에너지", "전기화학"],
        "keywords_en": ["water electrolysis", "catalyst", "membrane electrode assembly"],
        "keywords_ko": ["수전해", "촉매", "막전극접합체"],
        "firm_en": "Hydrogen Tech Co., Ltd.", "firm_ko": "수소테크",
    },
    {
        "subjects_en": ["a fan-out wafer-level packaging process", "a hybrid bonding process for stacked memory",
                        "a glass substrate for advanced packaging"],
        "subjects_ko": ["팬아웃 웨이퍼 레벨 패키징 공정", "적층 메모리용 하이브리드 본딩 공정", "첨단 패키징용 유리 기판"],
        "purpose_en": "for AI accelerator chips",
        "purpose_ko": "인공지능 가속기 반도체용",
        "benefit_en": "that raises interconnect density and heat dissipation",
        "benefit_ko": "배선 밀도와 방열 성능을 높이는",
        "method_en": (
            "Process windows are optimised with design of experiments and reliability is verified by thermal cycling "
            "and drop tests"
        ),
        "method_ko": "실험계획법으로 공정 조건을 최적화하고 열충격 및 낙하 시험으로 신뢰성을 검증한다",
        "target_en": "an interconnect pitch of {x} micrometres with a yield above 95%",
        "target_ko": "수율 95% 이상에서 배선 피치 {x} 마이크로미터 구현",
        "target_range": (2, 9, 0),
        "impact_en": "The process is intended for domestic outsourced assembly and test companies",
        "impact_ko": "개발 공정은 국내 후공정 전문기업에 적용될 예정이다",
        "fields_en": ["semiconductors", "advanced packaging", "AI hardware"],
        "fields_ko": ["반도체", "첨단 패키징", "인공지능 하드웨어"],
        "keywords_en": ["wafer-level packaging", "hybrid bonding", "reliability"],
        "keywords_ko": ["웨이퍼 레벨 패키징", "하이브리드 본딩", "신뢰성"],
        "firm_en": "Semiconductor Co., Ltd.", "firm_ko": "반도체",
    },
    {
        "subjects_en": ["a solid-state lidar sensor", "a 4D imaging radar", "a sensor-fusion perception module"],
        "subjects_ko": ["고체형 라이다 센서", "4D 이미징 레이더", "센서 융합 인지 모듈"],
        "purpose_en": "for level-4 autonomous vehicles",
        "purpose_ko": "레벨4 자율주행차용",
        "benefit_en": "that keeps detecting pedestrians in rain and at night",
        "benefit_ko": "우천과 야간에도 보행자를 안정적으로 인식하는",
        "method_en": (
            "The hardware is co-designed with a neural-network perception stack and validated on a public-road test "
            "route"
        ),
        "method_ko": "하드웨어와 신경망 기반 인지 소프트웨어를 함께 설계하고 실도로 시험 구간에서 검증한다",
        "target_en": "a detection range of {x} metres for objects with 10% reflectivity",
        "target_ko": "반사율 10% 물체에 대한 탐지 거리 {x} m 확보",
        "target_range": (150, 250, -1),
        "impact_en": "The sensors are designed to be supplied to domestic autonomous shuttle makers",
        "impact_ko": "개발 센서는 국내 자율주행 셔틀 제조사에 공급을 목표로 한다",
        "fields_en": ["autonomous driving", "automotive electronics", "sensors"],
        "fields_ko": ["자율주행", "자동차 전장", "센서"],
        "keywords_en": ["lidar", "radar", "perception"],
        "keywords_ko": ["라이다", "레이더", "인지"],
        "firm_en": "Mobility Inc.", "firm_ko": "모빌리티",
    },
    {
        "subjects_en": ["an environment control system for vertical farms", "a strawberry yield prediction model",
                        "an autonomous harvesting robot for greenhouses"],
        "subjects_ko": ["수직농장 환경제어 시스템", "딸기 수확량 예측 모델", "온실용 자율 수확 로봇"],
        "purpose_en": "for data-driven smart farming",
        "purpose_ko": "데이터 기반 스마트팜용",
        "benefit_en": "that raises yield per square metre while saving energy",
        "benefit_ko": "에너지를 절감하면서 단위 면적당 수확량을 높이는",
        "method_en": (
            "Sensor data on light, temperature, humidity and CO2 are combined with crop images to control the "
            "growing environment automatically"
        ),
        "method_ko": "광량, 온도, 습도, 이산화탄소 센서 데이터와 작물 영상을 결합해 재배 환경을 자동으로 제어한다",
        "target_en": "to raise the yield per square metre by {x}% over conventional greenhouses",
        "target_ko": "관행 온실 대비 단위 면적당 수확량 {x}% 향상",
        "target_range": (15, 35, 0),
        "impact_en": "The system will be demonstrated with farming cooperatives in two provinces",
        "impact_ko": "개발 시스템은 2개 도의 영농조합과 함께 실증한다",
        "fields_en": ["smart farming", "agriculture", "food security"],
        "fields_ko": ["스마트팜", "농업", "식량안보"],
        "keywords_en": ["vertical farm", "crop monitoring", "environment control"],
        "keywords_ko": ["수직농장", "작물 모니터링", "환경제어"],
        "firm_en": "Agritech Co., Ltd.", "firm_ko": "애그테크",
    },
    {
        "subjects_en": ["a continuous perfusion cell culture process", "a high-titer CHO cell line",
                        "an in-line quality monitoring system"],
        "subjects_ko": ["연속 관류 세포배양 공정", "고생산성 CHO 세포주", "인라인 품질 모니터링 시스템"],
        "purpose_en": "for monoclonal antibody manufacturing",
        "purpose_ko": "항체의약품 생산용",
        "benefit_en": "that lowers the production cost of biosimilars",
        "benefit_ko": "바이오시밀러 생산 원가를 낮추는",
        "method_en": (
            "The process is scaled from bench bioreactors to a 200 L single-use bioreactor with process analytical "
            "technology"
        ),
        "method_ko": "공정분석기술을 적용해 실험실 규모 생물반응기에서 200 L 일회용 생물반응기로 공정을 확대한다",
        "target_en": "an antibody titer of {x} grams per litre",
        "target_ko": "리터당 항체 생산량 {x} g 달성",
        "target_range": (3, 8, 0),
        "impact_en": "The process will be transferred to a contract manufacturing organisation",
        "impact_ko": "개발 공정은 위탁생산기업에 기술이전한다",
        "fields_en": ["biopharmaceuticals", "bioprocessing", "healthcare"],
        "fields_ko": ["바이오의약품", "바이오공정", "헬스케어"],
        "keywords_en": ["monoclonal antibody", "cell culture", "process analytical technology"],
        "keywords_ko": ["단일클론항체", "세포배양", "공정분석기술"],
        "firm_en": "Bio Inc.", "firm_ko": "바이오",
    },
    {
        "subjects_en": ["a wire-arc additive manufacturing cell", "an in-situ melt pool monitoring system",
                        "a deposition path planning software"],
        "subjects_ko": ["와이어 아크 적층 제조 셀", "실시간 용융지 모니터링 시스템", "적층 경로 생성 소프트웨어"],
        "purpose_en": "for large metal parts in shipbuilding and plant industries",
        "purpose_ko": "조선 및 플랜트용 대형 금속 부품 제조용",
        "benefit_en": "that replaces long-lead-time castings and forgings",
        "benefit_ko": "납기가 긴 주조품과 단조품을 대체하는",
        "method_en": (
            "Arc current, voltage and interlayer temperature are controlled in closed loop and defects are detected "
            "from process signals with AI"
        ),
        "method_ko": "아크 전류, 전압, 층간 온도를 폐루프로 제어하고 공정 신호에서 인공지능으로 결함을 검출한다",
        "target_en": "a deposition rate of {x} kilograms per hour with porosity below 0.5%",
        "target_ko": "기공률 0.5% 이하에서 시간당 적층량 {x} kg 달성",
        "target_range": (3, 8, 0),
        "impact_en": "The first application is a propeller hub demonstrator for a domestic shipyard",
        "impact_ko": "첫 적용 대상은 국내 조선소의 프로펠러 허브 시제품이다",
        "fields_en": ["additive manufacturing", "shipbuilding", "plant engineering"],
        "fields_ko": ["적층 제조", "조선", "플랜트"],
        "keywords_en": ["WAAM", "process monitoring", "metal 3D printing"],
        "keywords_ko": ["WAAM", "공정 모니터링", "금속 3D 프린팅"],
        "firm_en": "Additive Works Co., Ltd.", "firm_ko": "적층기술",
    },
    {
        "subjects_en": ["an amine-based carbon capture process", "a CO2 mineralisation process using steel slag",
                        "a CO2-to-methanol conversion catalyst"],
        "subjects_ko": ["아민 기반 탄소 포집 공정", "제강 슬래그를 이용한 이산화탄소 광물화 공정", "이산화탄소-메탄올 전환 촉매"],
        "purpose_en": "for carbon-intensive industrial sites",
        "purpose_ko": "탄소 다배출 산업 현장용",
        "benefit_en": "that cuts the energy penalty of capturing CO2",
        "benefit_ko": "이산화탄소 포집에 드는 에너지를 줄이는",
        "method_en": "A pilot plant treating flue gas from a steel mill is built and operated for 2,000 hours",
        "method_ko": "제철소 배가스를 처리하는 파일럿 플랜트를 구축해 2,000시간 연속 운전한다",
        "target_en": "a capture energy of {x} gigajoules per tonne of CO2",
        "target_ko": "이산화탄소 톤당 포집 에너지 {x} GJ 달성",
        "target_range": (22, 29, 1),
        "impact_en": "The results feed into the national carbon capture, utilisation and storage roadmap",
        "impact_ko": "성과는 국가 CCUS 로드맵에 반영된다",
        "fields_en": ["carbon neutrality", "steel industry", "chemical engineering"],
        "fields_ko": ["탄소중립", "철강산업", "화학공학"],
        "keywords_en": ["CCUS", "carbon capture", "flue gas"],
        "keywords_ko": ["CCUS", "탄소 포집", "배가스"],
        "firm_en": "Green Process Co., Ltd.", "firm_ko": "그린프로세스",
    },
    {
        "subjects_en": ["a collaborative robot with force sensing", "a mobile manipulator for logistics",
                        "a teaching-free bin-picking system"],
        "subjects_ko": ["힘 감지 협동로봇", "물류용 모바일 매니퓰레이터", "티칭 없는 빈피킹 시스템"],
        "purpose_en": "for small-batch electronics assembly",
        "purpose_ko": "소량 다품종 전자부품 조립용",
        "benefit_en": "that can be redeployed to a new product within a day",
        "benefit_ko": "하루 안에 신제품 공정으로 재배치할 수 있는",
        "method_en": "Grasp planning with 3D vision is combined with learning from human demonstration",
        "method_ko": "3차원 비전 기반 파지 계획과 사람 시연 학습을 결합한다",
        "target_en": "a picking success rate of {x}% on unseen parts",
        "target_ko": "처음 보는 부품에 대한 피킹 성공률 {x}% 달성",
        "target_range": (92, 99, 0),
        "impact_en": "Three electronics SMEs will operate the robots during the demonstration",
        "impact_ko": "전자부품 중소기업 3곳이 실증 기간 동안 로봇을 운영한다",
        "fields_en": ["robotics", "electronics manufacturing", "logistics"],
        "fields_ko": ["로봇", "전자제조", "물류"],
        "keywords_en": ["collaborative robot", "bin picking", "imitation learning"],
        "keywords_ko": ["협동로봇", "빈피킹", "모방학습"],
        "firm_en": "Robotics Inc.", "firm_ko": "로보틱스",
    },
    {
        "subjects_en": ["a micro LED mass transfer process", "a quantum-dot colour conversion layer",
                        "a stretchable display backplane"],
        "subjects_ko": ["마이크로 LED 전사 공정", "양자점 색변환층", "신축성 디스플레이 백플레인"],
        "purpose_en": "for next-generation wearable and AR displays",
        "purpose_ko": "차세대 웨어러블 및 AR 디스플레이용",
        "benefit_en": "that achieves high brightness at low power",
        "benefit_ko": "저전력으로 고휘도를 구현하는",
        "method_en": "Laser-assisted transfer and inkjet printing are developed on a 6-inch pilot line",
        "method_ko": "6인치 파일럿 라인에서 레이저 전사와 잉크젯 프린팅 공정을 개발한다",
        "target_en": "a transfer yield of 99.{x}% at a pixel density above 2,000 ppi",
        "target_ko": "2,000 ppi 이상의 화소 밀도에서 전사 수율 99.{x}% 달성",
        "target_range": (90, 99, 0),
        "impact_en": "The process targets panel makers preparing AR glasses",
        "impact_ko": "개발 공정은 AR 글라스를 준비하는 패널 제조사를 대상으로 한다",
        "fields_en": ["displays", "augmented reality", "wearable devices"],
        "fields_ko": ["디스플레이", "증강현실", "웨어러블 기기"],
        "keywords_en": ["micro LED", "mass transfer", "quantum dot"],
        "keywords_ko": ["마이크로 LED", "전사 공정", "양자점"],
        "firm_en": "Photonics Inc.", "firm_ko": "포토닉스",
    },
    {
        "subjects_en": ["a ceramic membrane filtration system", "an AI-based dosing control for water treatment",
                        "a forward osmosis desalination module"],
        "subjects_ko": ["세라믹 분리막 여과 시스템", "인공지능 기반 정수 약품 주입 제어", "정삼투 해수담수화 모듈"],
        "purpose_en": "for municipal water treatment plants",
        "purpose_ko": "지자체 정수장용",
        "benefit_en": "that lowers chemical use and membrane fouling",
        "benefit_ko": "약품 사용량과 분리막 오염을 줄이는",
        "method_en": (
            "Water quality sensors and operating records are used to train control models that are tested at a 5,000 "
            "tonne per day plant"
        ),
        "method_ko": "수질 센서와 운전 기록으로 제어 모델을 학습하고 하루 5,000톤 규모 정수장에서 시험한다",
        "target_en": "to cut coagulant use by {x}% at equal treated-water quality",
        "target_ko": "동일 수질 기준에서 응집제 사용량 {x}% 절감",
        "target_range": (10, 25, 0),
        "impact_en": "The system is designed for the replacement cycle of ageing treatment plants",
        "impact_ko": "개발 시스템은 노후 정수장 교체 수요에 대응한다",
        "fields_en": ["water treatment", "environmental engineering", "public infrastructure"],
        "fields_ko": ["수처리", "환경공학", "공공 인프라"],
        "keywords_en": ["membrane filtration", "water quality", "process control"],
        "keywords_ko": ["분리막 여과", "수질", "공정 제어"],
        "firm_en": "Water Tech Co., Ltd.", "firm_ko": "워터텍",
    },
    {
        "subjects_en": ["a hydrometallurgical recycling process for spent batteries",
                        "an automated battery pack disassembly line",
                        "a chemical recycling process for mixed plastics"],
        "subjects_ko": ["폐배터리 습식 제련 재활용 공정", "배터리 팩 자동 해체 라인", "혼합 폐플라스틱 화학적 재활용 공정"],
        "purpose_en": "for a circular materials economy",
        "purpose_ko": "자원 순환 경제 구축용",
        "benefit_en": "that recovers critical raw materials at battery grade",
        "benefit_ko": "핵심 원료를 배터리 등급으로 회수하는",
        "method_en": (
            "Leaching, solvent extraction and crystallisation steps are optimised and integrated in a continuous "
            "pilot line"
        ),
        "method_ko": "침출, 용매 추출, 결정화 공정을 최적화하여 연속식 파일럿 라인으로 통합한다",
        "target_en": "a lithium recovery rate of {x}% at 99.5% purity",
        "target_ko": "순도 99.5%에서 리튬 회수율 {x}% 달성",
        "target_range": (85, 95, 0),
        "impact_en": "The recovered materials will be supplied back to cathode producers",
        "impact_ko": "회수 소재는 양극재 제조사에 다시 공급된다",
        "fields_en": ["recycling", "battery materials", "circular economy"],
        "fields_ko": ["재활용", "이차전지 소재", "순환경제"],
        "keywords_en": ["battery recycling", "hydrometallurgy", "critical minerals"],
        "keywords_ko": ["배터리 재활용", "습식 제련", "핵심 광물"],
        "firm_en": "Recycling Co., Ltd.", "firm_ko": "리사이클링",
    },
    {
        "subjects_en": ["a BIM-based construction digital twin",
                        "a worker safety monitoring system with wearable sensors",
                        "a drone-based facade inspection service"],
        "subjects_ko": ["BIM 기반 건설 디지털 트윈", "웨어러블 센서 기반 작업자 안전 모니터링 시스템", "드론 기반 건물 외벽 점검 서비스"],
        "purpose_en": "for safer and faster construction sites",
        "purpose_ko": "안전하고 효율적인 건설 현장용",
        "benefit_en": "that detects hazards before accidents happen",
        "benefit_ko": "사고 발생 전에 위험 요소를 감지하는",
        "method_en": (
            "Site cameras, wearable sensors and BIM schedules are linked in one platform that issues real-time alerts"
        ),
        "method_ko": "현장 카메라, 웨어러블 센서, BIM 공정표를 하나의 플랫폼으로 연계해 실시간 경보를 제공한다",
        "target_en": "to cut safety incidents by {x}% on two apartment construction sites",
        "target_ko": "2개 공동주택 건설 현장에서 안전사고 {x}% 감소",
        "target_range": (20, 45, 0),
        "impact_en": "The platform helps contractors comply with the Serious Accidents Punishment Act",
        "impact_ko": "개발 플랫폼은 건설사의 중대재해처벌법 대응을 지원한다",
        "fields_en": ["construction", "occupational safety", "digital twin"],
        "fields_ko": ["건설", "산업안전", "디지털 트윈"],
        "keywords_en": ["BIM", "safety monitoring", "computer vision"],
        "keywords_ko": ["BIM", "안전 모니터링", "컴퓨터 비전"],
        "firm_en": "Construction Tech Inc.", "firm_ko": "건설테크",
    },
    {
        "subjects_en": ["a carbon-fibre composite airframe", "a hybrid-electric propulsion system",
                        "a detect-and-avoid system"],
        "subjects_ko": ["탄소섬유 복합재 기체 구조", "하이브리드 전기 추진 시스템", "충돌 회피 시스템"],
        "purpose_en": "for urban air mobility vehicles",
        "purpose_ko": "도심항공교통 기체용",
        "benefit_en": "that meets airworthiness requirements at low weight",
        "benefit_ko": "경량화와 감항 요건을 동시에 만족하는",
        "method_en": (
            "Automated fibre placement and out-of-autoclave curing are combined with structural testing of "
            "full-scale parts"
        ),
        "method_ko": "자동 섬유 적층과 비오토클레이브 경화 공정을 적용하고 실물 크기 부품의 구조 시험을 수행한다",
        "target_en": "to save {x}% of the weight of an aluminium reference structure",
        "target_ko": "알루미늄 기준 구조 대비 {x}% 경량화",
        "target_range": (20, 35, 0),
        "impact_en": "The results support the domestic UAM demonstration programme",
        "impact_ko": "성과는 국내 UAM 실증 사업에 활용된다",
        "fields_en": ["aerospace", "urban air mobility", "composite materials"],
        "fields_ko": ["항공우주", "도심항공교통", "복합소재"],
        "keywords_en": ["UAM", "composite structure", "airworthiness"],
        "keywords_ko": ["UAM", "복합재 구조", "감항 인증"],
        "firm_en": "Aerospace Co., Ltd.", "firm_ko": "항공우주",
    },
    {
        "subjects_en": ["a Korean large language model", "a retrieval-augmented question answering system",
                        "a document summarisation service"],
        "subjects_ko": ["한국어 거대언어모델", "검색 증강 질의응답 시스템", "문서 요약 서비스"],
        "purpose_en": "for public administration services",
        "purpose_ko": "공공 행정 서비스용",
        "benefit_en": "that answers citizens' questions about regulations and procedures",
        "benefit_ko": "법령과 민원 절차에 관한 국민의 질문에 답하는",
        "method_en": (
            "A base model is instruction-tuned with LoRA on curated administrative documents and evaluated by human "
            "experts"
        ),
        "method_ko": "선별된 행정 문서로 기반 모델을 LoRA 방식으로 지시어 튜닝하고 전문가 평가로 검증한다",
        "target_en": "an answer accuracy of {x}% on a benchmark of 1,000 civil petition questions",
        "target_ko": "민원 질의 1,000건 평가셋에서 답변 정확도 {x}% 달성",
        "target_range": (80, 92, 0),
        "impact_en": "The service will be piloted at two local government call centres",
        "impact_ko": "개발 서비스는 2개 지자체 민원 콜센터에서 시범 운영된다",
        "fields_en": ["artificial intelligence", "public services", "natural language processing"],
        "fields_ko": ["인공지능", "공공 서비스", "자연어처리"],
        "keywords_en": ["large language model", "instruction tuning", "retrieval-augmented generation"],
        "keywords_ko": ["거대언어모델", "지시어 튜닝", "검색 증강 생성"],
        "firm_en": "AI Lab Inc.", "firm_ko": "에이아이랩",
    },
    {
        "subjects_en": ["an ammonia-fuelled marine engine", "a shaft generator with energy storage",
                        "an autonomous navigation system"],
        "subjects_ko": ["암모니아 연료 선박 엔진", "에너지저장장치 연계 축발전기", "자율운항 시스템"],
        "purpose_en": "for eco-friendly coastal vessels",
        "purpose_ko": "친환경 연안 선박용",
        "benefit_en": "that meets the International Maritime Organization emission targets",
        "benefit_ko": "국제해사기구의 배출 규제를 충족하는",
        "method_en": (
            "Combustion is studied on a single-cylinder test engine and the system is integrated on a 500-tonne "
            "demonstration vessel"
        ),
        "method_ko": "단기통 시험 엔진에서 연소 특성을 연구하고 500톤급 실증 선박에 시스템을 통합한다",
        "target_en": "to cut greenhouse gas emissions per voyage by {x}%",
        "target_ko": "운항당 온실가스 배출량 {x}% 감축",
        "target_range": (40, 70, 0),
        "impact_en": "The technology prepares domestic shipyards for zero-emission ship orders",
        "impact_ko": "개발 기술은 국내 조선소의 무탄소 선박 수주에 대비한다",
        "fields_en": ["shipbuilding", "marine engineering", "carbon neutrality"],
        "fields_ko": ["조선", "해양공학", "탄소중립"],
        "keywords_en": ["ammonia fuel", "eco-friendly ship", "emission reduction"],
        "keywords_ko": ["암모니아 연료", "친환경 선박", "배출 저감"],
        "firm_en": "Marine Co., Ltd.", "firm_ko": "마린",
    },
    {
        "subjects_en": ["a patch-type continuous ECG monitor", "a cuffless blood pressure smartwatch",
                        "a sleep apnea screening wearable"],
        "subjects_ko": ["패치형 연속 심전도 측정기", "커프리스 혈압 측정 스마트워치", "수면무호흡 선별 웨어러블"],
        "purpose_en": "for remote monitoring of chronic patients",
        "purpose_ko": "만성질환자 원격 모니터링용",
        "benefit_en": "that detects deterioration early at home",
        "benefit_ko": "가정에서 상태 악화를 조기에 감지하는",
        "method_en": (
            "Low-power sensing hardware is paired with on-device signal processing and validated against hospital "
            "reference devices"
        ),
        "method_ko": "저전력 센서 하드웨어와 온디바이스 신호처리를 결합하고 병원용 기준 장비와 비교 검증한다",
        "target_en": "continuous operation of {x} days on one charge with clinical-grade accuracy",
        "target_ko": "임상 수준 정확도로 1회 충전 {x}일 연속 사용",
        "target_range": (7, 14, 0),
        "impact_en": "The device is planned for reimbursement under the remote patient monitoring pilot",
        "impact_ko": "개발 기기는 원격 모니터링 시범사업의 수가 적용을 목표로 한다",
        "fields_en": ["digital healthcare", "wearable devices", "medical devices"],
        "fields_ko": ["디지털 헬스케어", "웨어러블 기기", "의료기기"],
        "keywords_en": ["wearable sensor", "remote monitoring", "biosignal"],
        "keywords_ko": ["웨어러블 센서", "원격 모니터링", "생체신호"],
        "firm_en": "Healthcare Inc.", "firm_ko": "헬스케어",
    },
    {
        "subjects_en": ["a solar power forecasting model", "a virtual power plant operating platform",
                        "a grid-forming inverter for energy storage"],
        "subjects_ko": ["태양광 발전량 예측 모델", "가상발전소 운영 플랫폼", "에너지저장장치용 계통 형성 인버터"],
        "purpose_en": "for grids with a high share of renewable energy",
        "purpose_ko": "재생에너지 비중이 높은 전력망용",
        "benefit_en": "that reduces curtailment and keeps the grid stable",
        "benefit_ko": "출력 제한을 줄이고 계통 안정성을 유지하는",
        "method_en": (
            "Satellite images, weather forecasts and plant telemetry are combined in machine-learning models that "
            "feed the dispatch system"
        ),
        "method_ko": "위성 영상, 기상 예보, 발전소 계측 데이터를 결합한 머신러닝 모델을 급전 시스템과 연계한다",
        "target_en": "a day-ahead forecasting error below {x}% of installed capacity",
        "target_ko": "설비 용량 대비 하루 전 예측 오차 {x}% 이하",
        "target_range": (4, 8, 0),
        "impact_en": "The platform will be demonstrated on Jeju Island, where curtailment is most frequent",
        "impact_ko": "개발 플랫폼은 출력 제한이 가장 잦은 제주도에서 실증한다",
        "fields_en": ["renewable energy", "power grid", "energy AI"],
        "fields_ko": ["재생에너지", "전력망", "에너지 인공지능"],
        "keywords_en": ["solar forecasting", "virtual power plant", "grid stability"],
        "keywords_ko": ["태양광 예측", "가상발전소", "계통 안정"],
        "firm_en": "Energy Solutions Co., Ltd.", "firm_ko": "에너지솔루션",
    },
]


# Trailing digits and Latin letters read with a final consonant (영, 일, 삼, 육, 칠, 팔; 엘, 엠, 엔, 알).
_READ_WITH_FINAL = set("013678LMNR")


def _subject_particle(word: str) -> str:
    """이 after a final consonant, 가 after a vowel (the firm name is the sentence's subject)."""
    ch = word.rstrip(" )")[-1]
    if "가" <= ch <= "힣":
        return "이" if (ord(ch) - ord("가")) % 28 else "가"
    return "이" if ch.upper() in _READ_WITH_FINAL else "가"


# ----- raw records ------------------------------------------------------------------------------------
def _target_value(rng: random.Random, lo: int, hi: int, digits: int) -> str:
    if digits > 0:
        return f"{rng.uniform(lo, hi):.{digits}f}"
    value = rng.randint(lo, hi)
    if digits < 0:  # round to tens (detection ranges)
        value = round(value, digits)
    return str(value)


def make_record(index: int, domain: dict, variant: int, lang: str, rng: random.Random) -> dict:
    """One R&D project record in ``lang`` ("en" or "ko") about ``domain``'s ``variant``-th subject."""
    x = _target_value(rng, *domain["target_range"])
    subject = domain[f"subjects_{lang}"][variant]
    target = domain[f"target_{lang}"].format(x=x)
    if lang == "en":
        title = f"Development of {subject} {domain['purpose_en']}"
        abstract = (
            f"This project develops {subject} {domain['purpose_en']} {domain['benefit_en']}. "
            f"{domain['method_en']}. "
            f"The quantitative target is {target}. "
            f"{domain['impact_en']}."
        )
        firm = f"{rng.choice(FIRM_PREFIX['en'])} {domain['firm_en']}"
    else:
        title = f"{domain['purpose_ko']} {subject} 개발"
        abstract = (
            f"본 과제는 {domain['benefit_ko']} {domain['purpose_ko']} {subject} 개발을 목표로 한다. "
            f"{domain['method_ko']}. "
            f"정량 목표는 {target}이다. "
            f"{domain['impact_ko']}."
        )
        firm = f"(주){rng.choice(FIRM_PREFIX['ko'])}{domain['firm_ko']}"
    return {
        "id": f"rd-{index:04d}",
        "title": title,
        "abstract": abstract,
        "application_fields": list(domain[f"fields_{lang}"]),
        "keywords": list(domain[f"keywords_{lang}"]),
        "program_type": rng.choice(PROGRAMS[lang]),
        "phase": rng.choice(PHASES[lang]),
        "firm": firm,
    }


def make_raw_records(rng: random.Random) -> list[dict]:
    """20 domains x 3 subjects; about a third in Korean (a different variant per domain)."""
    records = []
    for variant in range(3):
        for d, domain in enumerate(DOMAINS):
            lang = "ko" if (d + variant) % 3 == 1 else "en"
            records.append(make_record(len(records) + 1, domain, variant, lang, rng))
    return records


# ----- question templates -------------------------------------------------------------------------------
def _sentences(abstract: str) -> list[str]:
    """The abstract's sentences (they end with a period followed by a space or the end)."""
    return [s.strip() for s in re.split(r"(?<=\.)\s+", abstract.strip()) if s.strip()]


def _is_korean(record: dict) -> bool:
    return re.search(r"[가-힣]", record["title"]) is not None


def qa_pairs(record: dict, kinds: list[str]) -> list[tuple[str, str]]:
    """Question-answer pairs of the requested ``kinds`` (goal, method, target, fields, firm), answered from
    the record's own fields only."""
    sent = _sentences(record["abstract"])
    title, fields, keywords = record["title"], record["application_fields"], record["keywords"]
    firm, program, phase = record["firm"], record["program_type"], record["phase"]
    if _is_korean(record):
        templates = {
            "goal": (f"'{title}' 과제의 주요 목표는 무엇인가요?", sent[0]),
            "method": (f"'{title}' 과제는 어떤 방법으로 추진되나요?", sent[1]),
            "target": (f"'{title}' 과제의 정량 목표는 무엇인가요?", sent[2]),
            "fields": (
                f"'{title}' 과제의 응용 분야는 무엇인가요?",
                f"이 과제는 {', '.join(fields)} 분야에 적용됩니다. 핵심 키워드는 {', '.join(keywords)}입니다.",
            ),
            "firm": (
                f"'{title}' 과제를 수행하는 기업과 현재 단계를 알려주세요.",
                f"{firm}{_subject_particle(firm)} {program}의 지원을 받아 수행하며, 현재 {phase}에 있습니다.",
            ),
        }
    else:
        templates = {
            "goal": (f'What is the main goal of the project "{title}"?', sent[0]),
            "method": (f'How does the project "{title}" approach the problem?', sent[1]),
            "target": (f'What quantitative target does the project "{title}" set?', sent[2]),
            "fields": (
                f'Which application fields does the project "{title}" target?',
                f"It targets {', '.join(fields[:-1])} and {fields[-1]}. Its keywords are "
                f"{', '.join(keywords[:-1])} and {keywords[-1]}.",
            ),
            "firm": (
                f'Which firm runs the project "{title}", and in which phase is it?',
                f"{firm} carries out the project under the {program}. It is currently in {phase}.",
            ),
        }
    return [templates[k] for k in kinds]


_EXTRA = ["fields", "firm", "method", "target"]


def question_kinds(position: int) -> list[str]:
    """Goal for every record, plus one (odd positions) or two (even positions) rotating questions: 2.5 on
    average."""
    kinds = ["goal", _EXTRA[position % 4]]
    if position % 2 == 0:
        kinds.append(_EXTRA[(position + 1) % 4])
    return kinds


def alpaca_records(record: dict, position: int) -> list[dict]:
    """The Alpaca records of one raw record; ``position`` (its index in the raw file) picks the questions."""
    return [
        {"id": f"{record['id']}-q{j}", "instruction": INSTRUCTION, "input": question, "output": answer}
        for j, (question, answer) in enumerate(qa_pairs(record, question_kinds(position)), start=1)
    ]


def split_records(records: list[dict], rng: random.Random) -> dict[str, list[dict]]:
    """Source records per split (48/6/6), in id order within a split."""
    order = list(range(len(records)))
    rng.shuffle(order)
    n_val, n_test = RECORDS_PER_SPLIT["val"], RECORDS_PER_SPLIT["test"]
    picks = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {s: [records[i] for i in sorted(picks[s])] for s in SPLITS}


def evaluation_questions(test: list[dict], rng: random.Random) -> list[dict]:
    chosen = sorted(rng.sample(range(len(test)), min(N_QUESTIONS, len(test))))
    return [{"id": test[i]["id"], "question": test[i]["input"], "reference": test[i]["output"]} for i in chosen]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


def generate(seed: int) -> dict[str, list[dict]]:
    """All files' records: ``raw_records``, ``train``, ``val``, ``test`` and ``questions``."""
    rng = random.Random(seed)
    raw = make_raw_records(rng)
    by_split = split_records(raw, rng)
    # Questions follow the record's position in the raw file, not the split it falls into.
    pairs = {r["id"]: alpaca_records(r, i) for i, r in enumerate(raw)}
    files = {"raw_records": raw}
    for s in SPLITS:
        files[s] = [p for r in by_split[s] for p in pairs[r["id"]]]
    files["questions"] = evaluation_questions(files["test"], rng)
    return files


def summarize(files: dict[str, list[dict]]) -> str:
    raw = files["raw_records"]
    korean = sum(_is_korean(r) for r in raw)
    lines = ["Instruction sample data (R&D projects, Alpaca format)"]
    lines.append(f"  raw_records: {len(raw)} ({korean} Korean, {len(raw) - korean} English)")
    total = 0
    for s in SPLITS:
        sources = {p["id"].rsplit("-q", 1)[0] for p in files[s]}
        total += len(files[s])
        lines.append(f"  {s}: {len(files[s])} QA pairs from {len(sources)} records "
                     f"({len(files[s]) / max(len(sources), 1):.2f} per record)")
    lines.append(f"  total: {total} QA pairs, {total / len(raw):.2f} per record")
    lines.append(f"  questions: {len(files['questions'])} evaluation questions from the test split")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Generate the synthetic R&D project records (raw_records.jsonl), the Alpaca QA pairs made from them "
            "by templates (train/val/test.jsonl, split by source record) and 10 evaluation questions "
            "(questions.jsonl). Deterministic in --seed."
        )
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random.Random (default: 0)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("data/samples/instructions"),
        help="output directory (default: data/samples/instructions)",
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    args = build_parser().parse_args(argv)
    files = generate(args.seed)
    for name, records in files.items():
        write_jsonl(args.out / f"{name}.jsonl", records)
    print(summarize(files))
    print(f"  written to {args.out}")
    return files


if __name__ == "__main__":
    main()
