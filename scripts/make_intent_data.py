#!/usr/bin/env python
"""Generate the synthetic intent data set of the designer-assistant router (MISSION §1).

Each record is one user utterance and its intent, generated as text by the tuned causal LM::

    {"id": "intent-0001", "text": "내일 부산 날씨 알려줘", "label": "날씨"}

Eight intents, with the Korean label names production generates: 지식 (knowledge chat), 이미지생성 (image
generation), 3D, 4D, 날씨 (weather), 일정 (schedule), 잡담 (small talk), 기타 (other / utility commands).
Utterances come from hand-written templates per intent (Korean, about 15% English) filled with slot
values (places, dates, objects, styles, ...). Korean particles follow the slot value (``{obj:을}`` gives
"의자를" and "책상을"), so the sentences read naturally. Texts are unique across the whole set (compared
without case, spaces and punctuation).

The split is stratified by label: 266 train / 50 val / 40 test, as in production. Fully determined by
--seed (Python's ``random.Random`` only)::

    python scripts/make_intent_data.py                 # 266/50/40 into data/samples/intent
    python scripts/make_intent_data.py --seed 1 --out /tmp/intent
"""

from __future__ import annotations

import argparse
import json
import random
import re
import unicodedata
from pathlib import Path

SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 266, "val": 50, "test": 40}
# Records per intent (sums to 356). Not uniform: production traffic is not either.
LABEL_COUNTS = {
    "지식": 48,
    "이미지생성": 48,
    "3D": 44,
    "4D": 40,
    "날씨": 44,
    "일정": 46,
    "잡담": 44,
    "기타": 42,
}
LABELS = list(LABEL_COUNTS)
ENGLISH_SHARE = 0.15

# ----- slot values ------------------------------------------------------------------------------------
# A slot is used as {name} (Korean templates) or {name_en} (English templates); the two lists of a pair
# need not align.
SLOTS: dict[str, list[str]] = {
    # weather
    "place": ["서울", "부산", "제주도", "대구", "인천", "광주", "대전", "강릉", "수원", "전주", "여수", "속초",
              "판교", "성수동", "홍대 쪽", "해운대", "춘천", "경주"],
    "place_en": ["Seoul", "Busan", "Jeju", "Incheon", "Daegu", "Gangneung", "Pangyo", "Gyeongju"],
    "when": ["오늘", "내일", "모레", "이번 주말", "내일 아침", "오늘 오후", "오늘 밤", "금요일 저녁",
             "다음 주 월요일", "토요일 오전", "퇴근 시간쯤", "내일 출근길"],
    "when_en": ["today", "tomorrow", "this weekend", "tomorrow morning", "tonight", "on Saturday",
                "this afternoon", "next Monday"],
    "outdoor": ["야외 촬영", "캠핑", "등산", "자전거 출퇴근", "현장 답사", "야외 전시 설치", "피크닉"],
    "outdoor_en": ["an outdoor photo shoot", "a picnic", "a site visit", "a hike"],
    # schedule
    "day": ["오늘", "내일", "모레", "이번 주 금요일", "다음 주 화요일", "다음 주 수요일", "목요일", "월요일",
            "이번 달 말", "다음 달 3일", "15일"],
    "day_en": ["tomorrow", "on Friday", "next Tuesday", "on Thursday", "next Monday", "on the 15th"],
    "wday_en": ["Friday", "Thursday", "next Tuesday", "next Monday", "Wednesday"],
    "weekday": ["월요일", "화요일", "수요일", "목요일", "금요일"],
    "time": ["오전 열 시", "오후 두 시", "오후 세 시 반", "아침 아홉 시", "오후 네 시", "저녁 일곱 시",
             "오전 열한 시", "점심시간"],
    "time_en": ["10 am", "2 pm", "3:30 pm", "9 am", "4 pm", "noon"],
    "event": ["디자인 리뷰", "팀 회의", "클라이언트 미팅", "주간 보고", "시안 발표", "제품 촬영", "워크숍",
              "인터뷰", "점심 약속", "치과 예약", "브레인스토밍", "전시 오프닝", "외주 업체 미팅", "1:1 면담"],
    "meet": ["디자인 리뷰", "팀 회의", "주간 보고", "시안 발표", "워크숍", "브레인스토밍", "프로젝트 킥오프",
             "1:1 면담"],
    "event_en": ["design review", "team meeting", "client call", "weekly sync", "portfolio review",
                 "product shoot", "kickoff meeting"],
    "person": ["김 팀장님", "마케팅팀", "클라이언트", "박 디자이너", "외주 업체", "개발팀", "이 대표님"],
    "person_en": ["the marketing team", "Jiwoo", "our client", "the dev team", "Ms. Park"],
    "remind": ["십 분", "삼십 분", "한 시간", "하루"],
    "remind_en": ["10 minutes", "30 minutes", "an hour", "a day"],
    # image generation
    "scene": ["우주복 입은 고양이", "우산을 쓴 여우", "책 읽는 펭귄", "달 위에 앉은 토끼", "꽃에 물 주는 로봇",
              "눈 내리는 한옥 마당", "노을 지는 바닷가", "비 오는 골목길", "별이 쏟아지는 사막", "해바라기 밭",
              "벚꽃이 핀 강변", "안개 낀 숲속 오두막", "커피를 내리는 바리스타", "서핑하는 강아지",
              "야시장 풍경", "구름 위의 성", "고래가 헤엄치는 하늘"],
    "scene_en": ["a cat in a space suit", "a fox holding an umbrella", "a lighthouse at dawn",
                 "a rainy street in Seoul", "a robot watering flowers", "a cozy cabin in a misty forest",
                 "a dog surfing a wave", "a castle above the clouds"],
    "style": ["수채화", "유화", "픽셀 아트", "미니멀", "사이버펑크", "빈티지", "팝아트", "연필 스케치",
              "동양화", "실사", "애니메이션", "레트로"],
    "style_en": ["watercolor", "pixel art", "minimalist", "cyberpunk", "vintage", "pop art", "pencil sketch"],
    "format": ["포스터", "로고", "배너", "썸네일", "책 표지", "앨범 커버", "배경화면", "아이콘", "엽서",
               "캐릭터 일러스트", "인스타그램 게시물"],
    "format_en": ["poster", "logo", "banner", "thumbnail", "book cover", "album cover", "wallpaper"],
    "color": ["파란색", "파스텔", "흑백", "따뜻한 주황색", "초록색", "보라색", "네온"],
    "color_en": ["blue", "pastel", "black and white", "warm orange", "neon"],
    "brand": ["카페", "베이커리", "꽃집", "독립 서점", "요가 스튜디오", "캠핑 브랜드", "수제 맥주집"],
    "brand_en": ["coffee shop", "bakery", "bookstore", "yoga studio", "flower shop"],
    "count": ["한 장", "두 장", "세 장", "네 장", "다섯 장"],
    # 3D
    "obj": ["의자", "스툴", "책상", "스탠드 조명", "꽃병", "머그컵", "스마트폰 거치대", "헤드폰 스탠드",
            "화분", "안경테", "신발 밑창", "자동차 휠", "캐릭터 피규어", "향수병", "키링", "소파", "선반",
            "블루투스 스피커", "손목시계", "건물 외관", "다리"],
    "obj_en": ["chair", "desk lamp", "vase", "coffee mug", "phone stand", "sneaker sole", "perfume bottle",
               "bookshelf", "wristwatch", "speaker"],
    "material": ["나무", "금속", "유리", "대리석", "플라스틱", "콘크리트", "가죽", "세라믹"],
    "material_en": ["wood", "brushed metal", "glass", "marble", "ceramic"],
    "shape": ["곡선형", "북유럽풍", "미래지향적인", "원목 느낌의", "미니멀한", "모듈형"],
    "furniture": ["의자", "스툴", "책상", "소파", "선반", "테이블", "스탠드 조명", "침대 프레임"],
    # 4D
    "moving": ["의자", "텐트", "우산", "램프 갓", "가방", "테이블", "꽃", "나비 날개", "로봇 팔", "선반",
               "파빌리온 지붕"],
    "moving_en": ["chair", "tent", "lamp shade", "table", "flower", "pavilion roof"],
    "motion": ["의자가 펼쳐지는", "텐트가 스스로 펴지는", "꽃이 피어나는", "우산이 접히는", "선반이 스스로 조립되는",
               "나비 날개가 움직이는", "로봇 팔이 물건을 집는", "파빌리온 지붕이 열리고 닫히는", "램프 갓이 천천히 열리는",
               "가방이 납작하게 접히는", "테이블이 의자로 변신하는"],
    "motion_en": ["a chair unfolding", "a tent pitching itself", "a flower blooming", "a lamp shade opening",
                  "a shelf assembling itself", "a pavilion roof folding open"],
    "process": ["건물이 지어지는 과정", "꽃이 피어나는 과정", "씨앗이 자라는 과정", "다리가 건설되는 과정",
                "빙하가 녹는 과정", "도시가 확장되는 과정", "가구가 조립되는 과정", "파도가 해안을 깎는 과정",
                "나무가 자라는 과정"],
    "process_en": ["a building is constructed", "a flower blooms", "a bridge is built", "a glacier melts",
                   "a city grows"],
    "stimulus": ["온도", "습도", "빛", "물", "열", "압력"],
    "stimulus_en": ["heat", "humidity", "light", "water"],
    "span": ["10년", "50년", "100년", "하루", "사계절", "일주일"],
    # knowledge
    "dconcept": ["황금비", "보색 대비", "게슈탈트 원리", "타이포그래피", "유니버설 디자인", "UX 라이팅",
                 "그리드 시스템", "색 온도", "지속 가능한 디자인", "인체공학", "디자인 씽킹", "여백"],
    "tconcept": ["적층 제조", "생성형 AI", "블록체인", "광합성", "양자 컴퓨터", "리튬 이온 배터리", "반도체",
                 "강화학습", "GPS", "3D 스캐닝"],
    "concept_en": ["the golden ratio", "design thinking", "kerning", "generative AI", "additive manufacturing",
                   "color temperature", "the rule of thirds"],
    "pair": ["RGB와 CMYK", "자간과 행간", "UX와 UI", "아르누보와 아르데코", "벡터와 비트맵", "세리프와 산세리프",
             "모더니즘과 포스트모더니즘", "PLA와 ABS 필라멘트", "증강현실과 가상현실", "명도와 채도"],
    "pair_en": ["RGB and CMYK", "serif and sans-serif fonts", "UX and UI", "vector and raster graphics",
                "AR and VR"],
    "movement": ["바우하우스", "아르누보", "미니멀리즘", "멤피스 디자인", "스칸디나비아 디자인", "모더니즘",
                 "데 스틸", "미드센추리 모던"],
    "movement_en": ["the Bauhaus", "Art Deco", "Memphis design", "mid-century modern"],
    "person_k": ["디터 람스", "찰스 임스", "자하 하디드", "안도 다다오", "안토니 가우디", "르 코르뷔지에",
                 "필립 스탁", "김수근"],
    "person_k_en": ["Dieter Rams", "Zaha Hadid", "Charles Eames", "Tadao Ando"],
    # small talk
    "greet": ["안녕", "하이", "좋은 아침", "굿모닝", "반가워", "오랜만이야"],
    "mood_good": ["오늘 기분 최고야", "오늘 발표 잘 끝났어", "드디어 금요일이다", "오늘 칭찬 받았어",
                  "시안이 한 번에 통과됐어"],
    "mood_bad": ["오늘 너무 피곤하다", "요즘 기분이 좀 우울해", "일이 잘 안 풀려", "월요일이라 힘들다",
                 "마감 때문에 지쳤어", "시안이 또 반려됐어", "배고파", "잠이 안 와", "심심해 죽겠어"],
    "sad": ["오늘 너무 피곤하다", "요즘 기분이 좀 우울해", "일이 잘 안 풀려", "월요일이라 힘들다",
            "마감 때문에 지쳤어", "시안이 또 반려됐어"],
    "about": ["이름이 뭐야", "몇 살이야", "좋아하는 색이 뭐야", "꿈이 뭐야", "잠은 자", "주말에 뭐 해",
              "기분이 어때", "사람이야 로봇이야", "좋아하는 음식 있어", "나 기억해"],
    "gtail": ["", "!", "ㅎㅎ", "~"],
    "btail": ["", "ㅠㅠ", "..."],
    # utility
    "dur": ["오 분", "십 분", "십오 분", "삼십 분", "한 시간", "삼 분"],
    "dur_en": ["5 minutes", "10 minutes", "25 minutes", "an hour"],
    "alarm": ["여섯 시 반", "일곱 시", "아침 여덟 시", "오후 한 시", "새벽 다섯 시"],
    "genre": ["재즈", "잔잔한 피아노 음악", "로파이 음악", "클래식", "신나는 노래", "빗소리 백색소음",
              "집중할 때 듣는 음악", "90년대 가요"],
    "genre_en": ["lo-fi beats", "some jazz", "classical music", "something upbeat"],
    "lang": ["영어", "일본어", "중국어", "프랑스어", "독일어", "스페인어"],
    "lang_en": ["English", "Japanese", "French", "Spanish"],
    "file": ["이 파일", "보고서", "발표 자료", "견적서", "이 사진", "포트폴리오"],
    "fmt": ["PDF", "PNG", "JPG", "워드 파일", "SVG", "엑셀 파일"],
    "fmt_en": ["PDF", "PNG", "JPG", "SVG"],
    "currency": ["달러", "엔화", "유로", "위안화", "파운드"],
    "calc": ["삼백 곱하기 십이", "1250 나누기 5", "칠만 원의 15퍼센트", "48 더하기 76", "2의 10제곱",
             "12만 나누기 3"],
    "calc_en": ["15% of 240", "1250 divided by 5", "37 times 12"],
    "app": ["계산기", "카메라", "메모장", "설정", "파일 탐색기", "녹음기"],
    "level": ["좀 줄여줘", "조금 키워줘", "최대로 올려줘", "반으로 낮춰줘"],
}

# ----- templates per intent ----------------------------------------------------------------------------
# {slot} inserts a value; {slot:을} also appends the particle that fits the value (을/를, 이/가, 은/는,
# 과/와, 으로/로, 이랑/랑).
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "날씨": {
        "ko": [
            "{when} {place} 날씨 알려줘",
            "{when} {place}에 비 와?",
            "{place} {when} 기온 몇 도야?",
            "{when} 우산 챙겨야 할까?",
            "{when} {place} 미세먼지 어때?",
            "{place} 이번 주 날씨 예보 보여줘",
            "{when} {outdoor} 하려는데 날씨 괜찮을까?",
            "{when} {place}에 눈 온대?",
            "{place} 지금 바람 많이 불어?",
            "{when} 최고 기온이랑 최저 기온 알려줘",
            "{when} 자외선 지수 높아?",
            "{place} 습도 지금 얼마나 돼?",
            "{when} {place} 출장 가는데 날씨 어때?",
            "{when} 비 올 확률 몇 퍼센트야?",
            "{when} 외투 챙겨야 할 만큼 추워?",
            "{place} 주말 날씨 맑아?",
        ],
        "en": [
            "What's the weather like in {place_en} {when_en}?",
            "Will it rain in {place_en} {when_en}?",
            "Do I need an umbrella {when_en}?",
            "How cold will it get in {place_en} {when_en}?",
            "Is the weather good for {outdoor_en} {when_en}?",
            "Give me the weekly forecast for {place_en}.",
        ],
    },
    "일정": {
        "ko": [
            "{day} {time}에 {event} 잡아줘",
            "{day} 일정 뭐 있어?",
            "{event:을} {day} {time:로} 옮겨줘",
            "{day} {event} 취소해줘",
            "{person:이랑} {day} {meet} 일정 잡아줘",
            "{event} {remind} 전에 알려줘",
            "{day} 오전 일정 비워줘",
            "{event} 몇 시였지?",
            "매주 {weekday} {time}에 {meet} 반복 일정으로 등록해줘",
            "{event} 일정 캘린더에 추가해줘",
            "{day} {person:과} 미팅 가능한 시간 찾아줘",
            "{day} {meet} 장소랑 참석자 알려줘",
            "{meet} 일정 {person}한테 공유해줘",
            "{day}까지 남은 마감 일정 정리해줘",
        ],
        "en": [
            "Schedule a {event_en} with {person_en} {day_en} at {time_en}.",
            "What's on my calendar {day_en}?",
            "Move the {event_en} to {wday_en} at {time_en}.",
            "Cancel my {event_en} {day_en}.",
            "Remind me {remind_en} before the {event_en}.",
            "Find a free slot {day_en} for a {event_en} with {person_en}.",
        ],
    },
    "이미지생성": {
        "ko": [
            "{scene} 그림 그려줘",
            "{style} 스타일로 {scene} 그려줘",
            "{style} 느낌의 {scene} 이미지 만들어줘",
            "{scene:이} 들어간 {format} 디자인해줘",
            "{brand} {format} 이미지 만들어줘, {color} 톤으로",
            "{color} 톤으로 {format} 배경 이미지 생성해줘",
            "{scene} 이미지 {count} 만들어줘",
            "이 사진을 {style} 스타일로 바꿔줘",
            "{brand} 로고 시안 {count} 그려줘",
            "{scene:을} 주제로 {format} 만들어줘",
            "{style} 화풍으로 {scene} 일러스트 부탁해",
            "배경을 {scene:로} 바꿔서 다시 그려줘",
        ],
        "en": [
            "Draw {scene_en} in {style_en} style.",
            "Generate an image of {scene_en}.",
            "Create a {color_en} {format_en} for a {brand_en}.",
            "Make a {style_en} illustration of {scene_en}.",
            "Design a {format_en} featuring {scene_en}.",
        ],
    },
    "3D": {
        "ko": [
            "{obj:을} 3D 모델로 만들어줘",
            "{obj} 3D 모델 만들어줘",
            "{material} 재질의 {obj} 3D 모델링 해줘",
            "이 스케치를 {obj} 3D 모델로 바꿔줘",
            "{obj} 3D 프린팅용 STL 파일 만들어줘",
            "{obj:을} 입체 모델로 만들어줘",
            "{obj} 3D 모델 텍스처를 {material} 재질로 바꿔줘",
            "{obj} 3D 모델 폴리곤 수 좀 줄여줘",
            "사진 속 {obj:을} 3D로 복원해줘",
            "{shape} {furniture:을} 3D로 디자인해줘",
            "{obj:을} 360도로 돌려볼 수 있는 3D 모델로 만들어줘",
            "{shape} {furniture} 3D 렌더링 해줘",
            "{obj} 3D 모델을 OBJ 파일로 내보내줘",
        ],
        "en": [
            "Generate a 3D model of a {obj_en}.",
            "Turn this sketch into a 3D {obj_en} model.",
            "Make a printable STL of a {obj_en}.",
            "Create a 3D mesh of a {material_en} {obj_en}.",
            "Model a {obj_en} in 3D with a {material_en} texture.",
        ],
    },
    "4D": {
        "ko": [
            "{process:을} 4D 시뮬레이션으로 보여줘",
            "{motion} 4D 애니메이션 만들어줘",
            "{stimulus}에 따라 모양이 바뀌는 {moving} 4D 프린팅 구조 설계해줘",
            "이 {moving} 3D 모델에 시간에 따른 변형을 넣어서 4D로 만들어줘",
            "{moving:이} 시간에 따라 변하는 4D 모델 생성해줘",
            "{process:을} 시간 순서대로 4D로 재현해줘",
            "이 건물이 {span} 동안 변하는 4D 시뮬레이션 보여줘",
            "{stimulus:에} 반응해서 모양이 바뀌는 {moving:을} 4D로 설계해줘",
            "{moving} 조립 순서를 4D 타임라인으로 보여줘",
            "{motion} 모습을 4D 모션으로 표현해줘",
            "{motion} 과정을 4D로 보여줘",
        ],
        "en": [
            "Make a 4D animation of {motion_en}.",
            "Simulate in 4D how {process_en} over time.",
            "Design a 4D-printed {moving_en} that changes shape with {stimulus_en}.",
            "Show a 4D timeline of {motion_en}.",
        ],
    },
    "지식": {
        "ko": [
            "{dconcept:이} 뭐야?",
            "{tconcept:이} 뭐야?",
            "{dconcept}에 대해 쉽게 설명해줘",
            "{pair}의 차이가 뭐야?",
            "{pair}의 차이를 예시로 설명해줘",
            "{movement}의 특징 알려줘",
            "{movement}의 대표 작품 알려줘",
            "{person_k:은} 어떤 작품으로 유명해?",
            "{tconcept:은} 어떤 원리로 작동해?",
            "{tconcept:을} 초등학생도 이해하게 설명해줘",
            "{movement:은} 언제 어떻게 시작됐어?",
            "{person_k}의 디자인 철학이 뭐야?",
            "{dconcept:이} 왜 중요해?",
        ],
        "en": [
            "What is {concept_en}?",
            "Explain the difference between {pair_en}.",
            "What is {person_k_en} best known for?",
            "Tell me about the history of {movement_en}.",
            "Why does {concept_en} matter in design?",
        ],
    },
    "잡담": {
        "ko": [
            "{greet}{gtail}",
            "{mood_good}{gtail}",
            "{mood_bad}{btail}",
            "안녕하세요, 오늘도 잘 부탁드려요",
            "너는 {about}?",
            "{greet}, 오늘 기분 어때?",
            "{greet}! 나 왔어",
            "고마워, 덕분에 살았어{gtail}",
            "수고했어, 오늘도 고마워",
            "재밌는 얘기 하나 해줘",
            "농담 하나 해줘",
            "칭찬 좀 해줘{gtail}",
            "응원 한마디 해줄래?",
            "{sad}. 위로 좀 해줘",
            "심심한데 나랑 얘기하자",
            "잘 자, 내일 또 보자",
            "너 정말 똑똑하다",
            "오늘 점심 뭐 먹을지 고민이야",
        ],
        "en": [
            "Hi there! How are you?",
            "Thanks, that was really helpful!",
            "Tell me a joke.",
            "I'm so tired today.",
            "What's your favorite color?",
            "Good night, see you tomorrow.",
            "You're awesome, thank you!",
            "Good morning! Ready for today?",
        ],
    },
    "기타": {
        "ko": [
            "타이머 {dur} 맞춰줘",
            "{alarm}에 알람 맞춰줘",
            "{genre} 틀어줘",
            "볼륨 {level}",
            "화면 밝기 {level}",
            "이 문장을 {lang:로} 번역해줘",
            "{file:을} {fmt:로} 변환해줘",
            "오늘 {currency} 환율 얼마야?",
            "{calc} 계산해줘",
            "{app} 열어줘",
            "{lang:로} '감사합니다'는 뭐라고 해?",
            "{file} 용량 좀 줄여줘",
            "와이파이 다시 연결해줘",
            "방금 말한 거 메모해줘",
        ],
        "en": [
            "Set a timer for {dur_en}.",
            "Translate this into {lang_en}.",
            "Convert this file to {fmt_en}.",
            "Play {genre_en}.",
            "What's {calc_en}?",
            "Turn the volume down a bit.",
        ],
    },
}

# ----- Korean particles ---------------------------------------------------------------------------------
_JOSA = {  # particle as written in a template -> (after a final consonant, after a vowel)
    "을": ("을", "를"), "를": ("을", "를"),
    "이": ("이", "가"), "가": ("이", "가"),
    "은": ("은", "는"), "는": ("은", "는"),
    "과": ("과", "와"), "와": ("과", "와"),
    "이랑": ("이랑", "랑"), "랑": ("이랑", "랑"),
    "으로": ("으로", "로"), "로": ("으로", "로"),
    "에": ("에", "에"),
}
# How a trailing digit or Latin letter is read: its final consonant (jongseong index, 0 = none).
_READ_FINAL = {"0": 21, "1": 8, "3": 16, "6": 1, "7": 8, "8": 8, "L": 8, "M": 16, "N": 4, "R": 8}
_RIEUL = 8


def _final_consonant(word: str) -> int:
    """Jongseong index of the last syllable as read aloud (0 when it ends in a vowel)."""
    ch = word.rstrip(" ')\"")[-1]
    if "가" <= ch <= "힣":
        return (ord(ch) - ord("가")) % 28
    return _READ_FINAL.get(ch.upper(), 0)


def attach(word: str, particle: str) -> str:
    """``word`` followed by the form of ``particle`` that fits it (의자를, 책상을, 오후 두 시로, 세 시 반으로)."""
    with_final, without_final = _JOSA[particle]
    final = _final_consonant(word)
    if particle in ("으로", "로"):
        return word + (with_final if final and final != _RIEUL else without_final)
    return word + (with_final if final else without_final)


_SLOT = re.compile(r"\{(\w+)(?::(\w+))?\}")


def render(template: str, rng: random.Random) -> str:
    """Fill every slot of ``template`` with a value drawn from ``SLOTS`` (particles attached)."""

    def fill(m: re.Match) -> str:
        value = rng.choice(SLOTS[m.group(1)])
        return attach(value, m.group(2)) if m.group(2) else value

    return re.sub(r"\s+", " ", _SLOT.sub(fill, template)).strip()


def normalize(text: str) -> str:
    """Key for duplicate detection: case, spaces and punctuation do not count."""
    return re.sub(r"[\W_]+", "", text.lower())


def generate_label(label: str, n: int, rng: random.Random, seen: set[str]) -> list[str]:
    """``n`` unique utterances of one intent, about ``ENGLISH_SHARE`` of them English.

    Templates are used round-robin (in a shuffled order) so that every template appears; a drawn
    utterance that duplicates an earlier one (in any intent) is drawn again.
    """
    n_en = round(n * ENGLISH_SHARE)
    texts: list[str] = []
    for lang, count in (("en", n_en), ("ko", n - n_en)):
        templates = list(TEMPLATES[label][lang])
        rng.shuffle(templates)
        made, turn, misses = 0, 0, 0
        while made < count:
            template = templates[turn % len(templates)]
            turn += 1
            text = render(template, rng)
            key = normalize(text)
            if key in seen:
                misses += 1
                if misses > 200 * count:
                    raise RuntimeError(f"{label}/{lang}: templates too few for {count} unique utterances")
                continue
            seen.add(key)
            texts.append(text)
            made += 1
    return texts


def stratified_counts(label_counts: dict[str, int], split_sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """Records per (split, label): proportional to the split sizes, rounded by largest remainder so that
    every split gets exactly its size; train takes what is left of each label."""
    total = sum(label_counts.values())
    if total != sum(split_sizes.values()):
        raise ValueError(f"label counts sum to {total}, split sizes to {sum(split_sizes.values())}")
    counts = {s: {} for s in split_sizes}
    for s in SPLITS[1:]:
        exact = {lab: n * split_sizes[s] / total for lab, n in label_counts.items()}
        floor = {lab: int(x) for lab, x in exact.items()}
        short = split_sizes[s] - sum(floor.values())
        # Largest fractional part first; ties in label order.
        for lab in sorted(exact, key=lambda lab: (floor[lab] - exact[lab], LABELS.index(lab)))[:short]:
            floor[lab] += 1
        counts[s] = floor
    counts["train"] = {lab: n - sum(counts[s][lab] for s in SPLITS[1:]) for lab, n in label_counts.items()}
    return counts


def generate_splits(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    per_label = {lab: generate_label(lab, n, rng, seen) for lab, n in LABEL_COUNTS.items()}
    counts = stratified_counts(LABEL_COUNTS, SPLIT_SIZES)
    splits: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for lab, texts in per_label.items():
        texts = list(texts)
        rng.shuffle(texts)
        start = 0
        for s in ("val", "test", "train"):
            splits[s] += [(t, lab) for t in texts[start : start + counts[s][lab]]]
            start += counts[s][lab]
    records: dict[str, list[dict]] = {}
    next_id = 1
    for s in SPLITS:
        rng.shuffle(splits[s])  # interleave the labels
        records[s] = []
        for text, lab in splits[s]:
            records[s].append({"id": f"intent-{next_id:04d}", "text": text, "label": lab})
            next_id += 1
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


_HANGUL = re.compile(r"[가-힣]")


def _display_width(text: str) -> int:
    """Terminal columns of ``text`` (Hangul takes two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def summarize(splits: dict[str, list[dict]]) -> str:
    lines = ["Intent sample data (designer-assistant router)"]
    lines.append("  counts: " + ", ".join(f"{s}={len(r)}" for s, r in splits.items()))
    width = max(_display_width(lab) for lab in [*LABELS, "label"]) + 2
    lines.append("  label" + " " * (width - 5) + "".join(f"{s:>7}" for s in SPLITS))
    for lab in LABELS:
        row = "".join(f"{sum(r['label'] == lab for r in splits[s]):>7}" for s in SPLITS)
        lines.append(f"  {lab}{' ' * (width - _display_width(lab))}{row}")
    texts = [r["text"] for recs in splits.values() for r in recs]
    korean = sum(bool(_HANGUL.search(t)) for t in texts)
    lines.append(f"  Korean {korean}/{len(texts)} ({korean / len(texts):.0%}), English {len(texts) - korean}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Generate the synthetic intent-classification data of the designer assistant (8 intents with "
            "Korean label names, mostly Korean utterances; train/val/test 266/50/40 stratified by label). "
            "Deterministic in --seed."
        )
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random.Random (default: 0)")
    p.add_argument(
        "--out", type=Path, default=Path("data/samples/intent"), help="output directory (default: data/samples/intent)"
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    args = build_parser().parse_args(argv)
    splits = generate_splits(args.seed)
    for s in SPLITS:
        write_jsonl(args.out / f"{s}.jsonl", splits[s])
    print(summarize(splits))
    print(f"  written to {args.out}")
    return splits


if __name__ == "__main__":
    main()
